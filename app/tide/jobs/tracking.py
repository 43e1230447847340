"""Worker-side job tracking: the base class of every submittable task.

Celery calls these hooks inside the worker around each execution; each one hands over to
``services``, where every job state change lives. Hooks (rather than only signals) run for
the task's own class, so tasks that are not Tide jobs pay nothing. Revocation and expiry
happen in the worker's main process without running the task; ``signals`` covers them.

A running job cut by the worker itself is not a revoked one. When the broker connection
drops, Celery cancels every running late-ack task (its ack would be lost with the
connection) and relies on the broker to deliver the message again. Celery's cancel first
records a retry in the result backend, which on Redis is the broker that just went away:
that write fails, the cancel is left half done, and the terminated task is then announced
as *revoked* (acknowledged, its job final, the redelivered message ignored). ``JobRequest``
cancels without the backend write, records the job as waiting again in PostgreSQL, and
leaves the message unacknowledged. RabbitMQ requeues it when the connection closes; the
Redis transport keeps it in its ``unacked`` hash (its restore at channel close failed while
Redis was down), so the integration's consumer step (``tide_celery.reconnect``), which
runs after every reconnection, puts it back at the head of its queue with every other
message the lost connection dropped. The job then runs again from the start, once: the
first run was cut, not finished.
"""

from __future__ import annotations

import heapq
import logging
import random
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.worker.control import control_command
from celery.worker.request import Request

from tide.jobs import services

logger = logging.getLogger(__name__)

#: The job's state while its cut message waits for redelivery.
CUT_REASON = "cut by a lost broker connection; delivered again"


class JobRequest(Request):
    """A job's request in the worker: a cancel by the worker is a retry, not a revoke."""

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        # Only the worker cancels (connection loss, cold shutdown); a client's cancel is a
        # revoke, which goes through ``terminate``. No retry in the result backend: on
        # Redis it is the broker that is away, and a failed write there turns the cancel
        # into a revocation. The job row, in PostgreSQL, says what happened.
        super().cancel(pool, signal, emit_retry=False)
        try:
            services.mark_retrying(self.id, error=CUT_REASON)
        except Exception:  # the database may be away too; the redelivery restarts it
            logger.warning("could not record job %s as cut", self.id, exc_info=True)


@control_command(args=[("task_ids", list)], signature="<task_ids>")
def release_revoked(state: Any, task_ids: list[str] | None = None, **_: Any) -> dict[str, Any]:
    """Let go of scheduled (eta/countdown) messages of revoked jobs now, not at their eta.

    Celery's revoke only flags the id: a worker holding the message until its eta keeps
    it (unacknowledged, a prefetch slot taken, the exporter's ``scheduled`` count up, the
    worker kept busy for the autoscaler) until then, which may be 30 days. This hands each
    held request of these ids to Celery's own eta path at once: it finds the request
    revoked, acknowledges the message, announces ``task_revoked`` and frees the slot.
    """
    from celery.worker import state as worker_state

    ids = set(task_ids or [])
    # Flag first, so a request handed over below can only be discarded, never run,
    # whichever of revoke and this command the worker hears first.
    worker_state.revoked.update(ids)
    consumer = state.consumer
    timer = consumer.timer
    released: list[str] = []
    for event in timer.queue:
        entry = event.entry
        request = entry.args[0] if entry.args else None
        if (
            request is not None
            and getattr(entry.fun, "__name__", "") == "apply_eta_task"
            and getattr(request, "id", None) in ids
            and not entry.canceled
        ):
            entry.cancel()
            consumer.apply_eta_task(request)
            released.append(request.id)
    if released:
        # A cancelled timer entry stays in kombu's heap until its time, and Celery's
        # ``inspect scheduled`` (Flower too) would still list it: take it out.
        heap = getattr(timer, "_queue", None)
        if isinstance(heap, list):
            heap[:] = [event for event in heap if not event.entry.canceled]
            heapq.heapify(heap)
        logger.info("released scheduled messages of revoked jobs: %s", ", ".join(released))
    return {"ok": f"released {len(released)}", "released": released}


class JobTask(Task):
    """Base class for tasks declared with ``@job_task``; keeps their job rows current."""

    abstract = True
    Request = "tide.jobs.tracking:JobRequest"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        # A job cancelled while its message waited must not run, even on a worker that
        # started after the revoke broadcast and so never heard it: the row decides.
        if not services.mark_started(
            task_id,
            worker=self.request.hostname or "",
            retries=self.request.retries or 0,
            workflow=self._workflow(),
            periodic=self._periodic_run(args, kwargs),
        ):
            raise Ignore()

    def _periodic_run(self, args: Any, kwargs: Any) -> services.PeriodicRun | None:
        # django-celery-beat names the periodic task in every message it sends.
        name = getattr(self.request, "periodic_task_name", None)
        if not name:
            return None
        delivery = self.request.delivery_info or {}
        return services.PeriodicRun(
            periodic_task=str(name),
            task=self.name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            queue=str(delivery.get("routing_key") or ""),
        )

    def _workflow(self) -> str:
        # Custom message headers become attributes of the request. "" says "read the
        # message: no workflow", so finishing a plain task costs no parent lookup.
        return getattr(self.request, services.WORKFLOW_HEADER, None) or ""

    def _callbacks(self) -> bool:
        # Only a task submitted with link/link_error carries the header.
        return bool(getattr(self.request, services.CALLBACKS_HEADER, None))

    def report_progress(self, percent: float, message: str = "") -> None:
        """Record progress (0-100) of the running job; clients see it at once."""
        if self.request.id:
            services.record_progress(self.request.id, percent=percent, message=message)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        # A job submitted with its own retry policy retries the task's retryable errors
        # (autoretry_for, or the task's own self.retry) that many times, that far apart.
        policy = getattr(self.request, services.RETRY_HEADER, None)
        if isinstance(policy, dict):
            if policy.get("max_retries") is not None:
                max_retries = int(policy["max_retries"])
            if policy.get("backoff") is not None and eta is None:
                countdown = _backoff(policy, retries=self.request.retries or 0)
        try:
            return super().retry(
                args=args,
                kwargs=kwargs,
                exc=exc,
                throw=throw,
                eta=eta,
                countdown=countdown,
                max_retries=max_retries,
                **options,
            )
        finally:
            # Celery's retry keeps a max_retries it is given on the task object
            # (``override_max_retries``), which is one per worker process, and autoretry
            # drops it only after a retry that returns, never after the Retry it raises: a
            # job's own limit would then apply to every later run of the task in that
            # process (a job allowing 1 retry made the next plain job fail at its second
            # attempt). It is this call's and no other's.
            self.__dict__.pop("override_max_retries", None)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        services.mark_succeeded(
            task_id, result=retval, workflow=self._workflow(), callbacks=self._callbacks()
        )

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        services.mark_retrying(task_id, error=_describe(exc))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        services.mark_failed(
            task_id, error=_describe(exc), workflow=self._workflow(), callbacks=self._callbacks()
        )


def _backoff(policy: dict[str, Any], *, retries: int) -> float:
    """Seconds before the next attempt: ``backoff * 2**retries``, at most ``backoff_max``,
    with ``jitter`` a random part of it (Celery's full jitter, in fractions of a second
    too: Celery's own helper rounds to whole seconds)."""
    factor = max(0.0, float(policy["backoff"]))
    delay = factor * 2 ** min(retries, 32)
    if policy.get("backoff_max") is not None:
        delay = min(delay, float(policy["backoff_max"]))
    return random.uniform(0, delay) if policy.get("jitter", True) else delay


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
