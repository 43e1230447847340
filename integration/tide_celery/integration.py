"""``install(app)``: turn Tide's integration on for one Celery app.

What it connects, and where each piece runs:

* producers (any process that publishes): the publish stamp (``tide_celery.publish``);
* ``celery worker`` (main process): the node name, when the command line gave none
  (``worker@<host>``, which Tide's operator addresses, instead of Celery's
  ``celery@<host>``), the registration heartbeat (``tide_celery.workers``), and on Redis
  the lease and the record of received deliveries that dead-worker recovery reads
  (``tide_celery.holdings``, ``tide_celery.recovery``), and the notices of messages
  recovery put back, handed to the app's receivers (``tide_celery.redeliveries``); and a
  consumer step that, after each reconnection to Redis, puts back the messages Celery
  dropped with the old connection (``tide_celery.reconnect``);
* pool processes: per task, one round trip when it starts (``task:<id>`` into the worker's
  running set) and one when it ends (out of it, ``+1`` on the queue's completion counter
  and the run's end state, runtime and wait in the same round trip;
  ``tide_celery.completions`` says which outcomes count, ``tide_celery.outcomes`` what
  else is counted).

Nothing happens on import: the signal handlers are connected by the first ``install``
and look up the task's app in a registry of installed apps, so a process holding several
Celery apps counts only for the ones that installed the integration. ``install`` is
idempotent; it returns the app's ``Integration``.

Failures never reach the task: the work is done whether or not it was counted. A lost
write is logged, and at worst leaves a count short for one heartbeat (running) or one
rate window (completions).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Sequence

from celery import signals

from tide_celery.broker import BrokerRedis
from tide_celery.completions import leaves_queue, queue_of, routes_of
from tide_celery.holdings import Holdings
from tide_celery.layout import (
    COMPLETED_KEY,
    HEARTBEAT_INTERVAL,
    LEASE_INTERVAL,
    NODE_NAME,
    PUBLISHED_AT_HEADER,
    TASKS_KEY,
    task_field,
    worker_key,
)
from tide_celery.outcomes import Increment, started_waiting
from tide_celery.outcomes import increments as outcome_increments
from tide_celery.publish import stamp_published_at
from tide_celery.redeliveries import deliver as deliver_redeliveries
from tide_celery.workers import Heartbeat, consumed_queues

log = logging.getLogger(__name__)


class Integration:
    """Tide's integration in one Celery app: its settings and the worker's state."""

    def __init__(
        self,
        app: Any,
        *,
        node_name: str | None = NODE_NAME,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        lease_interval: float = LEASE_INTERVAL,
    ) -> None:
        self.app = app
        self.node_name = node_name
        self.heartbeat_interval = heartbeat_interval
        self.lease_interval = min(lease_interval, heartbeat_interval)
        self.holdings: Holdings | None = None
        self.ttl = 3 * heartbeat_interval
        self.broker = BrokerRedis(app)
        #: The worker's node name, once this process is (or was forked from) a worker.
        self.node: str | None = None
        self.heartbeat: Heartbeat | None = None
        self._routes: dict[tuple[str, str], str] | None = None

    @property
    def routes(self) -> dict[tuple[str, str], str]:
        # Read on first use: install() runs before the app's configuration is complete.
        if self._routes is None:
            self._routes = routes_of(self.app)
        return self._routes

    # -- the worker's main process --------------------------------------------------------

    def worker_starting(self, worker: Any) -> None:
        self.node = str(worker.hostname)
        self.holdings = Holdings(self.broker, node=self.node, lease_ttl=3 * self.lease_interval)
        self.heartbeat = Heartbeat(
            self.broker,
            node=self.node,
            queues=lambda: consumed_queues(self.app),
            interval=self.heartbeat_interval,
            ttl=self.ttl,
            holdings=self.holdings,
            lease_interval=self.lease_interval,
            on_tick=lambda: deliver_redeliveries(self.broker, self.app),
        )
        self.heartbeat.start()

    def task_received(self, *, tag: str, task_id: str) -> None:
        if self.holdings is not None and self.broker.enabled:
            self.holdings.received(tag=tag, task_id=task_id)

    def worker_stopped(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    # -- pool processes -------------------------------------------------------------------

    def task_started(self, *, node: str, task_id: str, queue: str) -> None:
        key, field, ttl = worker_key(node), task_field(task_id), max(1, round(self.ttl))

        def build(pipe: Any, prefix: str) -> None:
            pipe.hset(prefix + key, field, queue)
            # The key may not exist yet (first task before the first beat lands): never
            # leave it without a TTL.
            pipe.expire(prefix + key, ttl)

        self.broker.run(build)

    def task_finished(
        self,
        *,
        node: str | None,
        task_id: str,
        queue: str,
        completed: bool,
        outcome: Sequence[Increment] = (),
    ) -> None:
        def build(pipe: Any, prefix: str) -> None:
            if node:
                pipe.hdel(prefix + worker_key(node), task_field(task_id))
            if completed:
                pipe.hincrby(prefix + COMPLETED_KEY, queue, 1)
            for command, field, amount in outcome:
                if command == "HINCRBYFLOAT":
                    pipe.hincrbyfloat(prefix + TASKS_KEY, field, amount)
                else:
                    pipe.hincrby(prefix + TASKS_KEY, field, amount)

        if node or completed or outcome:
            self.broker.run(build)


_installed: Any = weakref.WeakKeyDictionary()
_connect_lock = threading.Lock()
_connected = False


def integration_for(app: Any) -> Integration | None:
    """The app's ``Integration``, or ``None`` if it did not install one."""
    if app is None:
        return None
    # ``celery.current_app`` is a proxy; the registry holds the app itself.
    unwrap = getattr(app, "_get_current_object", None)
    if callable(unwrap):
        app = unwrap()
    try:
        found: Integration | None = _installed.get(app)
    except TypeError:  # not weak-referenceable: not a Celery app
        return None
    return found


def _delivered(task: Any) -> tuple[Integration, Any, str] | None:
    """(integration, request, queue) for a task run that came from a broker, else None."""
    integration = integration_for(getattr(task, "app", None))
    request = getattr(task, "request", None)
    # Eager calls (apply(), task_always_eager) never passed through a broker.
    if integration is None or request is None or request.is_eager:
        return None
    queue = queue_of(request.delivery_info, integration.routes)
    if queue is None:
        return None
    return integration, request, queue


def _node_of(integration: Integration, request: Any) -> str | None:
    return integration.node or getattr(request, "hostname", None) or None


def _on_task_prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    found = _delivered(task or sender)
    if found is None:
        return
    integration, request, queue = found
    # The run's start, for its runtime and wait (read back in task_postrun). The request
    # context lives exactly as long as the run, so nothing is left behind by a run that
    # never reaches task_postrun.
    request.tide_started = (time.monotonic(), time.time())
    node = _node_of(integration, request)
    if not node:
        return
    try:
        integration.task_started(node=node, task_id=str(task_id or request.id), queue=queue)
    except Exception:
        log.warning("could not record task %s as running on %s", task_id, queue, exc_info=True)


def _on_task_postrun(
    sender: Any = None,
    task_id: Any = None,
    task: Any = None,
    state: str | None = None,
    retval: Any = None,
    **_: Any,
) -> None:
    found = _delivered(task or sender)
    if found is None:
        return
    integration, request, queue = found
    try:
        integration.task_finished(
            node=_node_of(integration, request),
            task_id=str(task_id or request.id),
            queue=queue,
            completed=leaves_queue(state, retval),
            outcome=_outcome(task or sender, request, queue, state, retval),
        )
    except Exception:
        # The task's work is done and acknowledged regardless; a lost count only slows
        # the rate estimate for one window (the heartbeat clears the running field).
        log.warning("could not count task %s's end on %s", task_id, queue, exc_info=True)


def _outcome(
    task: Any, request: Any, queue: str, state: str | None, retval: Any
) -> list[Increment]:
    """What the run adds to the per-task counters: its end, runtime and wait."""
    started = getattr(request, "tide_started", None)
    runtime = wait = None
    if started is not None:
        runtime = time.monotonic() - started[0]
        begin = started_waiting(getattr(request, PUBLISHED_AT_HEADER, None), request.eta)
        if begin is not None:
            wait = started[1] - begin
    name = getattr(task, "name", None) or getattr(request, "task", None) or "unknown"
    return outcome_increments(
        queue=queue, task=str(name), state=state, retval=retval, runtime=runtime, wait=wait
    )


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """The worker's main process got a message: record its delivery tag (Redis only)."""
    integration = integration_for(getattr(getattr(request, "task", None), "app", None))
    if integration is None:
        integration = integration_for(getattr(sender, "app", None))
    if integration is None or request is None:
        return
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if not tag:
        return
    try:
        integration.task_received(tag=str(tag), task_id=str(request.id))
    except Exception:
        # Unrecorded, the message is put back by the transport's visibility timeout
        # if this worker dies holding it: slower, not lost.
        log.warning("could not record the delivery of task %s", request.id, exc_info=True)


def _on_celeryd_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Name the worker ``<node_name>@<host>`` when the command line left Celery's default."""
    integration = integration_for(getattr(instance, "app", None))
    if integration is None or not integration.node_name:
        return
    from celery.app import trace
    from celery.utils.nodenames import NODENAME_DEFAULT, nodename, nodesplit

    name, host = nodesplit(str(instance.hostname))
    if name not in (None, NODENAME_DEFAULT) or not host:
        return  # Named on the command line (-n): the user's choice stands.
    renamed = nodename(integration.node_name, host)
    instance.hostname = renamed
    # The worker primed its task tracer with the old name a moment ago; prime it again so
    # task.request.hostname agrees with the name the worker answers to.
    trace.setup_worker_optimizations(instance.app, renamed)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    integration = integration_for(getattr(sender, "app", None))
    if integration is not None:
        integration.worker_starting(sender)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    integration = integration_for(getattr(sender, "app", None))
    if integration is not None:
        integration.worker_stopped()


def _connect() -> None:
    global _connected
    with _connect_lock:
        if _connected:
            return
        # weak=False: these are module functions, but be explicit that they stay connected.
        options: dict[str, Any] = {"weak": False}
        signals.before_task_publish.connect(
            stamp_published_at, dispatch_uid="tide_celery.stamp", **options
        )
        signals.task_prerun.connect(_on_task_prerun, dispatch_uid="tide_celery.prerun", **options)
        signals.task_postrun.connect(
            _on_task_postrun, dispatch_uid="tide_celery.postrun", **options
        )
        signals.task_received.connect(
            _on_task_received, dispatch_uid="tide_celery.received", **options
        )
        signals.celeryd_init.connect(_on_celeryd_init, dispatch_uid="tide_celery.name", **options)
        signals.worker_init.connect(_on_worker_init, dispatch_uid="tide_celery.init", **options)
        signals.worker_shutdown.connect(
            _on_worker_shutdown, dispatch_uid="tide_celery.shutdown", **options
        )
        _connected = True


def install(
    app: Any,
    *,
    node_name: str | None = NODE_NAME,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
) -> Integration:
    """Turn Tide's integration on for ``app`` (a ``celery.Celery``); idempotent.

    ``node_name``: the name half a worker started without ``-n`` gets (``worker@<host>``);
    ``None`` keeps Celery's ``celery@<host>``. ``heartbeat_interval``: seconds between a
    worker's registrations; a worker that dies stops counting within three of them.
    """
    existing = integration_for(app)
    if existing is not None:
        return existing
    if heartbeat_interval <= 0:
        raise ValueError(f"heartbeat_interval must be positive, not {heartbeat_interval!r}")
    _connect()
    integration = _installed[app] = Integration(
        app, node_name=node_name, heartbeat_interval=heartbeat_interval
    )
    # After every reconnection, the messages Celery dropped go back (tide_celery.reconnect).
    app.steps["consumer"].add("tide_celery.reconnect:RequeueHeld")
    return integration
