"""Scale targets: "how many replicas are there" and "make it N", behind one small interface.

``ScaleTarget`` is what the reconcile step drives. ``DeploymentTarget`` implements it for a
Kubernetes Deployment (owned or adopted); local mode implements it with worker processes.
The replica count a target reports is the size it is converging to, not counting workers
that are shutting down: a Deployment's ``spec.replicas`` (pods being deleted after a
scale-down are already outside it, and the ReplicaSet controller leaves them out of
``status.replicas`` too), or the local processes not yet told to stop.

Scaling goes through the Deployment's ``scale`` subresource, like the HPA's, so an adopted
Deployment needs no more than ``deployments/scale`` rights and nothing else about it is
touched. Before a scale-down, ``mark_idle_first`` asks the pool's workers (by their Celery
node names, ``worker@<pod>``, and only those) how many tasks each holds, and sets
``controller.kubernetes.io/pod-deletion-cost`` so the ReplicaSet controller removes idle
pods first. That is a hint, not a lock: a task that arrives between the inspection and the
deletion still has the pod's grace period (Celery's warm shutdown) to finish.

``ensure_owned_deployment`` creates the Deployment of a ``template`` pool or rolls its pod
template when the spec changed, and refuses to touch a same-named Deployment the pool does
not control: adopting something by accident would let a WorkerPool's deletion delete it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from tide_operator.adapters.kube import JSON_PATCH, ApiError, Conflict, KubeApi, NotFound
from tide_operator.adapters.workloads import Workloads
from tide_operator.resources.deployments import (
    CORDONED_ANNOTATION,
    DELETION_COST_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    PodLoad,
    build_worker_deployment,
    deployment_name,
    deployment_replicas,
    is_owned_by,
    plan_consolidation,
    plan_deletion_costs,
    template_hash,
    worker_hostname,
)
from tide_operator.resources.safety import WorkerFacts, WorkerReport, report_from_inspect
from tide_operator.resources.spec import WorkerPool
from tide_operator.resources.status import Replicas

__all__ = [
    "BusyProbe",
    "CeleryInspectProbe",
    "Consolidates",
    "ConsumerControl",
    "DeploymentTarget",
    "ReportsBusy",
    "ReportsReplicaStatus",
    "ReportsTaskAges",
    "ReportsWorkers",
    "ScaleTarget",
    "SharedReports",
    "TargetUnavailable",
    "WorkerFactsCache",
    "WorkerProbe",
    "ensure_owned_deployment",
]

log = logging.getLogger(__name__)


class TargetUnavailable(Exception):
    """The target cannot be read or written; ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ScaleTarget(Protocol):
    """What the reconcile step scales. Implementations: Deployment, local processes."""

    async def current(self) -> int:
        """Replicas counted as capacity: the size converged to, terminating ones excluded."""
        ...

    async def scale(self, replicas: int, *, reason: str) -> None:
        """Make it ``replicas``; called only when that differs from ``current()``."""
        ...

    async def mark_idle_first(self, count: int) -> None:
        """Before removing ``count`` replicas, arrange for idle ones to go. May be a no-op."""
        ...


@runtime_checkable
class ReportsBusy(Protocol):
    """A target that can say how many of its workers hold running tasks."""

    async def busy_replicas(self) -> int | None: ...


@runtime_checkable
class ReportsTaskAges(Protocol):
    """Optional, beside ``ReportsBusy``: in the same question to the workers, how long the
    longest-running task has run (seconds; None when no answer carried a start time).

    The policy's drain-safety rule learns from these ages whether a busy worker's tasks end
    well within its grace period (``core.policy``, ``_drain_is_safe``).
    """

    async def busy_replicas_with_age(self) -> tuple[int | None, float | None]: ...


@runtime_checkable
class ReportsReplicaStatus(Protocol):
    """Optional: a target that can say what exists, as opposed to what it was set to.

    ``current()`` is the size the target converges to (what the policy moves from);
    ``replica_status()`` is what its controllers report exists and is ready, and why not, which
    is what the status and the operator's metrics report.
    """

    async def replica_status(self) -> Replicas | None: ...


class BusyProbe(Protocol):
    """Tasks each worker holds (active + reserved); None for a worker that did not answer."""

    async def busy(self, hostnames: Sequence[str]) -> Mapping[str, int | None]: ...


@runtime_checkable
class AgingBusyProbe(Protocol):
    """A ``BusyProbe`` that also says when the oldest of the running tasks started."""

    async def busy_with_age(
        self, hostnames: Sequence[str]
    ) -> tuple[Mapping[str, int | None], float | None]: ...


def oldest_task_age(active: Mapping[str, Any], *, now: float) -> float | None:
    """How long the longest-running task of ``inspect active``'s answer has run.

    Celery reports each running task's ``time_start`` as wall-clock seconds (the pool's
    monotonic acceptance time converted with the worker's clock); a task not yet started
    has none. A worker clock ahead of ours gives no negative age.
    """
    starts = [
        task["time_start"]
        for tasks in active.values()
        for task in tasks or ()
        if isinstance(task, Mapping)
        and isinstance(task.get("time_start"), int | float)
        and not isinstance(task.get("time_start"), bool)
    ]
    return max(0.0, now - min(starts)) if starts else None


@runtime_checkable
class ConsumerControl(Protocol):
    """Tell workers to stop or start consuming from queues (Celery's remote control)."""

    async def stop_consuming(self, hostnames: Sequence[str], queues: Sequence[str]) -> None: ...

    async def resume_consuming(self, hostnames: Sequence[str], queues: Sequence[str]) -> None: ...


@runtime_checkable
class Consolidates(Protocol):
    """Optional: a target that can cordon busy workers instead of removing them
    (``shutdown.consolidate``; see ``resources.deployments.plan_consolidation``)."""

    @property
    def can_consolidate(self) -> bool: ...

    async def cordoned(self) -> int:
        """How many of ``current()`` are cordoned: finishing tasks, taking no new ones."""
        ...

    async def consolidate(
        self, desired: int, *, current: int, queues: Sequence[str], reason: str
    ) -> int:
        """Move to ``desired`` consuming workers; return the new replica count."""
        ...


class WorkerProbe(Protocol):
    """What each worker really runs (acks, prefetch, slots); None for one that did not answer."""

    async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]: ...


@runtime_checkable
class ReportsWorkers(Protocol):
    """Optional: a target that can say what its workers run, and (adopted) its pod template."""

    async def worker_facts(self, *, now: float) -> WorkerFacts | None: ...

    def adopted_template(self) -> Mapping[str, Any] | None: ...


class CeleryInspectProbe:
    """Celery remote control addressed to the given node names only: what each holds
    (``inspect active`` + ``reserved``) and what each runs (``inspect conf`` + ``stats``).

    A bare Celery app with the workers' broker and *their* transport options: the key
    prefix decides which broadcast keys the workers listen on, and the key layout (``sep``,
    priority steps) must be theirs, or the command reaches nobody and can disturb them
    (a stock Celery 5.4 worker stops answering and consuming on a foreign layout).
    """

    def __init__(
        self,
        broker_url: str,
        *,
        timeout: float = 2.0,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        from celery import Celery

        # A bare app: the operator needs the broker, not the Django project's tasks.
        # No fix-ups: a DJANGO_SETTINGS_MODULE in the environment must not set a project up.
        self._app = Celery("tide-operator", broker=broker_url, set_as_current=False, fixups=[])
        # Celery lets a CELERY_BROKER_URL variable win over ``broker``; the read and write
        # URLs come first, so the broker asked for is the one used.
        self._app.conf.broker_read_url = self._app.conf.broker_write_url = broker_url
        self._app.conf.broker_transport_options = dict(transport_options or {})
        self.timeout = timeout

    @property
    def transport_options(self) -> Mapping[str, Any]:
        options: Mapping[str, Any] = self._app.conf.broker_transport_options
        return options

    def _inspect(self, hostnames: list[str]) -> tuple[dict[str, int | None], float | None]:
        inspect = self._app.control.inspect(destination=hostnames, timeout=self.timeout)
        active: dict[str, list[Any]] = inspect.active() or {}
        reserved: dict[str, list[Any]] = inspect.reserved() or {}
        counts = {
            h: len(active[h]) + len(reserved.get(h) or []) if h in active else None
            for h in hostnames
        }
        return counts, oldest_task_age(active, now=time.time())

    async def busy(self, hostnames: Sequence[str]) -> Mapping[str, int | None]:
        return (await self.busy_with_age(hostnames))[0]

    async def busy_with_age(
        self, hostnames: Sequence[str]
    ) -> tuple[Mapping[str, int | None], float | None]:
        if not hostnames:
            return {}, None
        # Celery's remote control is synchronous; keep it off the operator's event loop.
        return await asyncio.to_thread(self._inspect, list(hostnames))

    def _reports(self, hostnames: list[str]) -> dict[str, WorkerReport | None]:
        inspect = self._app.control.inspect(destination=hostnames, timeout=self.timeout)
        # With defaults: a setting the app left alone (Celery's early acks) is in the
        # answer too, with the value the worker really uses.
        confs: dict[str, Mapping[str, Any]] = inspect.conf(with_defaults=True) or {}
        stats: dict[str, Mapping[str, Any]] = inspect.stats() or {}
        registered = self._registered(list(confs))
        return {
            h: report_from_inspect(
                h, conf=confs[h], stats=stats.get(h), integration=registered.get(h)
            )
            if h in confs
            else None
            for h in hostnames
        }

    def _registered(self, nodes: list[str]) -> dict[str, bool | None]:
        """Which nodes Tide's integration has registered (their running tasks are counted).

        The integration keeps live nodes in a sorted set under the broker's key prefix
        (``tide_celery.layout.WORKERS_KEY``, node -> expiry). On a broker other than Redis
        it counts nothing, so the answer is "no" there; ``None`` when it cannot be read.
        """
        if not nodes:
            return {}
        from tide_celery.layout import WORKERS_KEY

        try:
            with self._app.pool.acquire(block=True, timeout=self.timeout) as connection:
                if connection.transport.driver_type != "redis":
                    return dict.fromkeys(nodes, False)
                channel: Any = connection.default_channel
                import redis

                # A plain client over kombu's pool: kombu's prefixing client prefixes only
                # the commands kombu itself sends, so the prefix is added here.
                client = redis.Redis(connection_pool=channel.pool)
                key = channel.global_keyprefix + WORKERS_KEY
                pipe = client.pipeline(transaction=False)
                for node in nodes:
                    pipe.zscore(key, node)
                scores = pipe.execute()
        except Exception as exc:
            log.warning("could not read the integration's worker registrations: %s", exc)
            return dict.fromkeys(nodes)
        now = time.time()
        return {
            node: score is not None and float(score) > now
            for node, score in zip(nodes, scores, strict=True)
        }

    async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]:
        if not hostnames:
            return {}
        return await asyncio.to_thread(self._reports, list(hostnames))

    def _consumers(self, command: str, hostnames: list[str], queues: list[str]) -> None:
        control = self._app.control
        call = control.cancel_consumer if command == "cancel" else control.add_consumer
        for queue in queues:
            # Addressed to these nodes only; the reply says each one did it.
            call(queue, destination=hostnames, reply=True, timeout=self.timeout)

    async def stop_consuming(self, hostnames: Sequence[str], queues: Sequence[str]) -> None:
        """``cancel_consumer``: the workers finish what they hold and take nothing new."""
        if hostnames and queues:
            await asyncio.to_thread(self._consumers, "cancel", list(hostnames), list(queues))

    async def resume_consuming(self, hostnames: Sequence[str], queues: Sequence[str]) -> None:
        """``add_consumer``: the workers take work from the queues again."""
        if hostnames and queues:
            await asyncio.to_thread(self._consumers, "add", list(hostnames), list(queues))

    def close(self) -> None:
        self._app.close()


class SharedReports:
    """One worker-report broadcast serves every pool that asks at the same moment.

    Celery's ``inspect`` returns when every worker it named has answered, and otherwise at
    its timeout: a pool whose workers are silent (still starting, remote control off, an
    adopted Deployment whose workers are not named ``worker@<pod>``) holds a thread for two
    broadcasts' timeouts. Asked pool by pool, 100 such pools queued ~400 s of waiting on
    the few threads of the loop's executor, and a new acting replica, whose pools all ask
    on their first tick, took 79.5 s on a real API server to write every pool's status.
    Here the asks of one moment (``gather`` seconds) are sent as one broadcast to the union
    of their workers, in a thread, and each pool keeps its own workers' answers; an ask
    made while a broadcast is out starts the next one. A failure is shared like an answer.
    """

    def __init__(self, probe: WorkerProbe, *, gather: float = 0.05) -> None:
        self.probe = probe
        self.gather = gather
        #: Broadcasts sent (for the tests).
        self.sent = 0
        self._hosts: set[str] = set()
        self._pending: asyncio.Future[Mapping[str, WorkerReport | None]] | None = None

    async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]:
        if not hostnames:
            return {}
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            self._hosts = set()
            task = asyncio.ensure_future(self._send(self._pending))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._hosts.update(hostnames)
        answers = await asyncio.shield(self._pending)
        return {h: answers.get(h) for h in hostnames}

    async def _send(self, future: asyncio.Future[Mapping[str, WorkerReport | None]]) -> None:
        await asyncio.sleep(self.gather)  # the other pools of this moment join
        hosts, self._hosts, self._pending = sorted(self._hosts), set(), None
        self.sent += 1
        try:
            answers = await self.probe.reports(hosts)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: no warning if every asker left
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not future.done():
            future.set_result(answers)


#: Seconds between two looks at which workers a pool runs, when nothing else changed.
WORKER_FACTS_REFRESH: Final = 60.0


@dataclass
class WorkerFactsCache:
    """What a pool's workers answered, kept across ticks (one per pool, by its loop).

    A worker's settings do not change while it lives, so each is asked once; the pod list
    is read again only when the Deployment's ready count or generation moves, or after
    ``WORKER_FACTS_REFRESH`` seconds (which also re-asks the silent ones), so a steady
    pool costs one pod list a minute and no remote control at all.
    """

    reports: dict[str, WorkerReport] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    signature: tuple[Any, ...] | None = None
    asked_at: float | None = None

    def facts(self) -> WorkerFacts:
        return WorkerFacts(
            answered=tuple(self.reports[h] for h in sorted(self.reports)),
            silent=tuple(sorted(self.silent)),
        )

    def due(self, signature: tuple[Any, ...], now: float) -> bool:
        return (
            self.asked_at is None
            or signature != self.signature
            or now - self.asked_at >= WORKER_FACTS_REFRESH
        )

    async def refresh(
        self,
        probe: WorkerProbe,
        hostnames: Sequence[str],
        *,
        signature: tuple[Any, ...],
        now: float,
    ) -> WorkerFacts:
        """Keep the answers of live workers; ask the ones not heard from yet."""
        live = set(hostnames)
        self.reports = {h: r for h, r in self.reports.items() if h in live}
        unknown = [h for h in hostnames if h not in self.reports]
        answers = await probe.reports(unknown) if unknown else {}
        for host in unknown:
            report = answers.get(host)
            if report is not None:
                self.reports[host] = report
        self.silent = {h for h in unknown if h not in self.reports}
        self.signature, self.asked_at = signature, now
        return self.facts()


def _deployment_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _selector(deployment: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    return dict(labels)


class DeploymentTarget:
    """A Deployment scaled through its ``scale`` subresource."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        busy_probe: BusyProbe | None = None,
        worker_probe: WorkerProbe | None = None,
        facts_cache: WorkerFactsCache | None = None,
        adopted: bool = False,
        cordon_writes: dict[str, bool] | None = None,
        workloads: Workloads | None = None,
    ) -> None:
        self.api = api
        # The watches' view of Deployments and pods; None or not watching: read the API.
        self.workloads = workloads if workloads is not None and workloads.watching else None
        self.namespace = namespace
        self.name = name
        self.busy_probe = busy_probe
        self.worker_probe = worker_probe
        self.facts_cache = facts_cache if facts_cache is not None else WorkerFactsCache()
        self.adopted = adopted
        self.last: dict[str, Any] | None = None
        self._primed = False
        # What the last mark_idle_first found, for the status and the tests.
        self.last_idle: int | None = None
        # The pods ``cordoned()`` listed, reused by ``consolidate`` in the same step.
        self._pods: list[dict[str, Any]] | None = None
        # Cordons written (pod name -> cordoned) until the pods read show them; the pool's
        # loop keeps it across ticks (a watch's index may lag a tick behind a write).
        self._cordon_writes: dict[str, bool] = cordon_writes if cordon_writes is not None else {}

    async def fetch(self) -> dict[str, Any]:
        if self.workloads is not None:
            found = self.workloads.deployment(self.namespace, self.name)
            if found is None:
                raise TargetUnavailable(
                    "TargetNotFound", f"Deployment {self.namespace}/{self.name} not found"
                )
            self.last = found
            return found
        try:
            body: dict[str, Any] = await self.api.get(_deployment_path(self.namespace, self.name))
        except NotFound as exc:
            raise TargetUnavailable(
                "TargetNotFound", f"Deployment {self.namespace}/{self.name} not found"
            ) from exc
        except ApiError as exc:
            if exc.transient:
                raise  # the daemon decides whether it lasted long enough to report
            raise TargetUnavailable("TargetUnreadable", str(exc)) from exc
        self.last = body
        return body

    def prime(self, body: dict[str, Any]) -> None:
        """Use ``body`` (just read or written) for the next ``current()`` instead of a GET."""
        self.last = body
        self._primed = True

    def selector_string(self) -> str | None:
        """The pods' label selector as text, once the Deployment has been read."""
        if self.last is None:
            return None
        selector = _selector(self.last)
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None

    async def current(self) -> int:
        if self._primed and self.last is not None:
            self._primed = False
            body = self.last
        else:
            body = await self.fetch()
        replicas = body.get("spec", {}).get("replicas")
        # The API server defaults an omitted spec.replicas to 1.
        return 1 if replicas is None else int(replicas)

    async def replica_status(self) -> Replicas | None:
        """From the Deployment as last read (this tick): its status, not its spec."""
        return None if self.last is None else deployment_replicas(self.last)

    async def scale(self, replicas: int, *, reason: str) -> None:
        path = _deployment_path(self.namespace, self.name) + "/scale"
        try:
            answer = await self.api.patch(path, {"spec": {"replicas": replicas}})
        except NotFound as exc:
            if self.workloads is not None:
                self.workloads.vanished(self.namespace, self.name)
            raise TargetUnavailable(
                "TargetNotFound", f"Deployment {self.namespace}/{self.name} not found"
            ) from exc
        except ApiError as exc:
            if exc.transient:
                raise
            raise TargetUnavailable("ScaleFailed", str(exc)) from exc
        if self.workloads is not None:
            # Until the watch reports it, the next tick must see the size just set.
            version = (answer.get("metadata") or {}).get("resourceVersion")
            self.workloads.scaled(
                self.namespace,
                self.name,
                replicas,
                version=None if version is None else str(version),
            )
        log.info("scaled %s/%s to %d: %s", self.namespace, self.name, replicas, reason)

    async def worker_pods(self) -> list[dict[str, Any]]:
        """The Deployment's pods that are not terminating."""
        deployment = self.last if self.last is not None else await self.fetch()
        selector = _selector(deployment)
        if not selector:
            return []
        if self.workloads is not None:
            pods = self.workloads.pods(self.namespace, selector)
        else:
            pods = await self.api.list(
                f"/api/v1/namespaces/{self.namespace}/pods", label_selector=self.selector_string()
            )
        labels_match = [
            p
            for p in pods
            if all(
                (p.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in selector.items()
            )
        ]
        # A terminating pod is already leaving; it is neither capacity nor a candidate.
        return [p for p in labels_match if not p.get("metadata", {}).get("deletionTimestamp")]

    def adopted_template(self) -> Mapping[str, Any] | None:
        """The adopted Deployment's pod template, as last read (None for an owned one)."""
        if not self.adopted or self.last is None:
            return None
        template: Mapping[str, Any] = self.last.get("spec", {}).get("template") or {}
        return template

    async def worker_facts(self, *, now: float) -> WorkerFacts | None:
        """What the workers answered (cached; see ``WorkerFactsCache``), None without a probe."""
        if self.worker_probe is None:
            return None
        cache = self.facts_cache
        body = self.last or {}
        signature = (
            (body.get("status") or {}).get("readyReplicas"),
            (body.get("metadata") or {}).get("generation"),
        )
        if not cache.due(signature, now):
            return cache.facts()
        pods = await self.worker_pods()
        # Only pods that are up can answer; one still starting is asked on a later look.
        hostnames = [worker_hostname(p["metadata"]["name"]) for p in pods if _ready(p)]
        return await cache.refresh(self.worker_probe, hostnames, signature=signature, now=now)

    async def busy_replicas(self) -> int | None:
        """How many worker pods hold running tasks (``ReportsBusy``), or None if unknown.

        A worker that does not answer is not counted: it cannot be ranked either, and
        counting it would stop an adopted Deployment whose workers are not named
        ``worker@<pod>`` from ever scaling down.
        """
        return (await self.busy_replicas_with_age())[0]

    async def busy_replicas_with_age(self) -> tuple[int | None, float | None]:
        """``busy_replicas`` and how long the longest-running task has run (``ReportsTaskAges``),
        from one question to the workers."""
        if self.busy_probe is None:
            return None, None
        pods = await self.worker_pods()
        if not pods:
            return 0, None
        hosts = [worker_hostname(p["metadata"]["name"]) for p in pods]
        if isinstance(self.busy_probe, AgingBusyProbe):
            busy, age = await self.busy_probe.busy_with_age(hosts)
        else:
            busy, age = await self.busy_probe.busy(hosts), None
        answers = [busy.get(h) for h in hosts]
        if all(a is None for a in answers):
            return None, None
        return sum(1 for a in answers if a is not None and a > 0), age

    @property
    def can_consolidate(self) -> bool:
        return self.busy_probe is not None and isinstance(self.busy_probe, ConsumerControl)

    def _is_cordoned(self, pod: Mapping[str, Any]) -> bool:
        """Cordoned per the annotation, or per this target's own write the pods it reads
        (a watch's index) may not show yet."""
        meta = pod.get("metadata", {})
        annotated = CORDONED_ANNOTATION in (meta.get("annotations") or {})
        written = self._cordon_writes.get(meta.get("name", ""))
        if written is None:
            return annotated
        if written == annotated:
            del self._cordon_writes[meta["name"]]  # the reads caught up
        return written

    async def cordoned(self) -> int:
        """Pods annotated as cordoned (``CORDONED_ANNOTATION``); lists the pods."""
        self._pods = await self.worker_pods()
        names = {p["metadata"]["name"] for p in self._pods}
        for gone in set(self._cordon_writes) - names:
            del self._cordon_writes[gone]
        return sum(1 for p in self._pods if self._is_cordoned(p))

    async def consolidate(
        self, desired: int, *, current: int, queues: Sequence[str], reason: str
    ) -> int:
        """Cordon, reopen and remove per ``plan_consolidation``, then scale.

        Order: workers stop consuming before they are annotated (a cordoned pod is never
        left consuming), costs are written before the size drops (the ReplicaSet sees them
        when it picks), and a reopened worker consumes before its annotation goes.
        """
        probe = self.busy_probe
        assert probe is not None
        assert isinstance(probe, ConsumerControl)
        pods = self._pods if self._pods is not None else await self.worker_pods()
        self._pods = None
        names = [p["metadata"]["name"] for p in pods]
        busy = await probe.busy([worker_hostname(n) for n in names])
        loads, cordoned = [], set()
        for pod in pods:
            meta = pod["metadata"]
            annotations = meta.get("annotations") or {}
            if self._is_cordoned(pod):
                cordoned.add(meta["name"])
            raw = annotations.get(DELETION_COST_ANNOTATION)
            try:
                cost = int(raw) if raw is not None else None
            except ValueError:
                cost = None
            loads.append(PodLoad(meta["name"], busy.get(worker_hostname(meta["name"])), cost))
        plan = plan_consolidation(
            loads, cordoned=frozenset(cordoned), current=current, desired=desired
        )
        # Every cordoned worker is told again (idempotent): a restarted worker process
        # would otherwise consume under a cordoned pod.
        still = [n for n in cordoned if n not in plan.reopen and n not in plan.remove]
        stop = [worker_hostname(n) for n in (*plan.cordon, *still)]
        await probe.stop_consuming(stop, queues)
        await probe.resume_consuming([worker_hostname(n) for n in plan.reopen], queues)
        for name in names:
            changes: dict[str, str | None] = {}
            if name in plan.costs:
                changes[DELETION_COST_ANNOTATION] = str(plan.costs[name])
            if name in plan.cordon:
                changes[CORDONED_ANNOTATION] = "true"
            if name in plan.reopen:
                changes[CORDONED_ANNOTATION] = None
            if not changes:
                continue
            try:
                await self.api.patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                    {"metadata": {"annotations": changes}},
                )
            except NotFound:
                continue
            if CORDONED_ANNOTATION in changes:
                self._cordon_writes[name] = changes[CORDONED_ANNOTATION] is not None
        self.last_idle = sum(1 for load in loads if load.busy == 0)
        if plan.replicas != current:
            await self.scale(plan.replicas, reason=reason)
        return plan.replicas

    async def mark_idle_first(self, count: int) -> None:
        if self.busy_probe is None or count <= 0:
            return
        pods = await self.worker_pods()
        names = [p["metadata"]["name"] for p in pods]
        busy = await self.busy_probe.busy([worker_hostname(n) for n in names])
        loads = []
        for pod in pods:
            name = pod["metadata"]["name"]
            raw = (pod["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION)
            try:
                current_cost = int(raw) if raw is not None else None
            except ValueError:
                current_cost = None
            loads.append(PodLoad(name, busy.get(worker_hostname(name)), current_cost))
        plan = plan_deletion_costs(loads, remove=count)
        self.last_idle = plan.idle
        for name, cost in plan.costs.items():
            try:
                await self.api.patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                    {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(cost)}}},
                )
            except NotFound:
                continue  # the pod went away meanwhile: nothing to rank


async def ensure_owned_deployment(
    api: KubeApi, pool: WorkerPool, *, initial_replicas: int, workloads: Workloads | None = None
) -> tuple[dict[str, Any], bool]:
    """Create or roll the Deployment of a ``template`` pool: (live object, whether written).

    With ``workloads`` watching, the Deployment is read from the watch (no request unless
    something must be written), and every write is remembered there until the watch
    reports it.
    """
    name = deployment_name(pool)
    path = _deployment_path(pool.namespace, name)
    desired = build_worker_deployment(pool, replicas=initial_replicas)
    watched = workloads if workloads is not None and workloads.watching else None
    found: dict[str, Any] | None
    if watched is not None:
        found = watched.deployment(pool.namespace, name)
    else:
        try:
            found = await api.get(path)
        except NotFound:
            found = None
    if found is None:
        try:
            created: dict[str, Any] = await api.create(_deployment_path(pool.namespace), desired)
            if watched is not None:
                watched.wrote(created)
            return created, True
        except Conflict:
            # Created by someone else between our read and our write: read it again.
            found = await api.get(path)
            if watched is not None:
                watched.wrote(found)
    live: dict[str, Any] = found
    if not is_owned_by(live, pool):
        raise TargetUnavailable(
            "DeploymentNotOwned",
            f"Deployment {pool.namespace}/{name} exists and is not controlled by this "
            "WorkerPool; delete it, or use scaleTargetRef to adopt it",
        )
    wanted = template_hash(pool)
    annotations = live.get("metadata", {}).get("annotations") or {}
    if annotations.get(TEMPLATE_HASH_ANNOTATION) == wanted:
        return live, False
    # The spec changed: replace the pod template whole (a merge would keep removed keys),
    # which rolls the pods; then record the hash, so a failure in between is redone.
    try:
        await api.patch(
            path,
            [
                {"op": "replace", "path": "/spec/template", "value": desired["spec"]["template"]},
                {"op": "replace", "path": "/spec/strategy", "value": desired["spec"]["strategy"]},
            ],
            content_type=JSON_PATCH,
        )
        patched: dict[str, Any] = await api.patch(
            path,
            {
                "metadata": {
                    "labels": desired["metadata"]["labels"],
                    "annotations": {TEMPLATE_HASH_ANNOTATION: wanted},
                }
            },
        )
    except NotFound:
        if watched is not None:
            watched.vanished(pool.namespace, name)  # the next tick creates it
        raise
    if watched is not None:
        watched.wrote(patched)
    return patched, True
