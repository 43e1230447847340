"""The chaos bench's witness inside each worker: one line per completed execution.

Loaded into the bench's workers with ``celery worker --include faults_ledger``. A task that
returns appends ``done <task id>`` to the file named by ``TIDE_FAULTS_LEDGER`` (one small
``O_APPEND`` write, atomic between processes), so the bench counts how many times each job
really ran to completion, which the job rows cannot say (a second success finds the row
final and changes nothing).
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import task_success


@task_success.connect
def _record(sender: Any = None, **_: Any) -> None:
    path = os.environ.get("TIDE_FAULTS_LEDGER")
    task_id = getattr(getattr(sender, "request", None), "id", None)
    if path and task_id:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"done {task_id}\n".encode())
        finally:
            os.close(fd)
