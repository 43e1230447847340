"""The chaos bench's witness inside each worker: one line per execution started, ended and
completed.

Loaded into the bench's workers with ``celery worker --include faults_ledger``. Each run of a
task appends ``start <task id> <worker> <time>`` when it starts, ``end ...`` when it ends
however it ends, and ``done ...`` when it returned (one small ``O_APPEND`` write each, atomic
between processes) to the file named by ``TIDE_FAULTS_LEDGER``. So the bench counts how many
times each job really ran to completion, which the job rows cannot say (a second success
finds the row final and changes nothing), and what a worker was running when its pod was
deleted (started, not ended).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.signals import task_postrun, task_prerun, task_success


def _append(kind: str, task: Any) -> None:
    path = os.environ.get("TIDE_FAULTS_LEDGER")
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    if path and task_id:
        worker = getattr(request, "hostname", None) or "-"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {task_id} {worker} {time.time():.3f}\n".encode())
        finally:
            os.close(fd)


@task_prerun.connect
def _started(sender: Any = None, **_: Any) -> None:
    _append("start", sender)


@task_postrun.connect
def _ended(sender: Any = None, **_: Any) -> None:
    _append("end", sender)


@task_success.connect
def _record(sender: Any = None, **_: Any) -> None:
    _append("done", sender)
