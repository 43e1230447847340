"""Worker-side job tracking: the base class of every submittable task.

Celery calls these hooks inside the worker around each execution; each one hands over to
``services``, where every job state change lives. Hooks (rather than only signals) run for
the task's own class, so tasks that are not Tide jobs pay nothing. Revocation and expiry
happen in the worker's main process without running the task; ``signals`` covers them.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tide.jobs import services


class JobTask(Task):
    """Base class for tasks declared with ``@job_task``; keeps their job rows current."""

    abstract = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        # A job cancelled while its message waited must not run, even on a worker that
        # started after the revoke broadcast and so never heard it: the row decides.
        if not services.mark_started(
            task_id,
            worker=self.request.hostname or "",
            retries=self.request.retries or 0,
            workflow=self._workflow(),
        ):
            raise Ignore()

    def _workflow(self) -> str:
        # Custom message headers become attributes of the request. "" says "read the
        # message: no workflow", so finishing a plain task costs no parent lookup.
        return getattr(self.request, services.WORKFLOW_HEADER, None) or ""

    def report_progress(self, percent: float, message: str = "") -> None:
        """Record progress (0-100) of the running job; clients see it at once."""
        if self.request.id:
            services.record_progress(self.request.id, percent=percent, message=message)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        services.mark_succeeded(task_id, result=retval, workflow=self._workflow())

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        services.mark_retrying(task_id, error=_describe(exc))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        services.mark_failed(task_id, error=_describe(exc), workflow=self._workflow())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
