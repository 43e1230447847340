"""Celery signal receivers for job changes that happen without the task running.

A revoked or expired message is discarded by the worker's main process, so no task hook
runs; ``task_revoked`` is the only place that sees it.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_revoked

from tide.jobs import services


@task_revoked.connect
def on_task_revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        services.mark_revoked(task_id, reason="expired" if expired else "revoked")
