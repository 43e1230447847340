"""Celery signal receivers for job changes that happen without the task running.

A revoked or expired message is discarded by the worker's main process, so no task hook
runs; ``task_revoked`` is the only place that sees it.

A dead worker's message put back by recovery (``tide_celery.recovery``, run by the
operator, local mode or the worker's next run) is announced to the app's workers by
``tide_celery.redeliveries``; any live worker takes the notice within a lease interval
(2 s) and the job turns from ``started`` to ``retrying`` until it runs again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery.signals import task_revoked
from django.db import close_old_connections, connection

from tide.jobs import services
from tide_celery.redeliveries import Redelivery, redelivered


@task_revoked.connect
def on_task_revoked(
    request: Any = None, expired: bool = False, terminated: bool = False, **_: Any
) -> None:
    task_id = getattr(request, "id", None)
    if task_id:
        reason = "expired" if expired else "terminated by client" if terminated else "revoked"
        services.mark_revoked(task_id, reason=reason)


@redelivered.connect
def on_redelivered(notices: list[Redelivery] = (), **_: Any) -> None:  # type: ignore[assignment]
    # Runs in the worker's heartbeat thread, which has a database connection of its own
    # only for this: closed after, since notices are rare.
    close_old_connections()
    try:
        for notice in notices:
            at = datetime.fromtimestamp(notice.at, tz=UTC)
            services.mark_redelivered(notice.task_id, worker=notice.node, at=at)
    finally:
        connection.close()
