"""kopf handlers: a loop per WorkerPool that parses, calls the reconcile step, reports.

kopf watches the pools and hands every event to ``PoolLoops`` (``pools.py``), which runs one
asyncio loop per pool. Why a loop and not a timer: ``pollingInterval`` is per pool and may
change while the pool runs, which a timer's fixed interval cannot follow; a loop sleeps
whatever the live spec says, and the watch keeps its body up to date. Why not a kopf daemon:
kopf gives every daemon a finalizer, which made deleting a pool (or its namespace) hang
while the operator was away, and nothing here needs one (``pools.py`` says more). The loop
keeps the pool's policy state in a local variable, so it lives exactly as long as the pool
is watched (an operator restart starts fresh, and the policy seeds itself from the current
size, so a restart never shrinks a pool at once).

Each tick: parse the spec (a spec the CRD let through but the models refuse is reported as
``Ready=False/InvalidSpec``, and the loop carries on, so a bad pool never affects the
others); for a ``template`` pool create or roll its Deployment; run ``reconcile_step``; write
the status only if it changed; post an Event per scale and per new failure; update the
operator's metrics. Every failure of one tick is caught and reported, never raised: the
pool would otherwise silently stop scaling.

Outages are quiet, because they are when the operator's costs matter most (every pool
fails at once). An API server that does not answer (``Unreachable``) says nothing about the
pool, so nothing is written or reported: the pool keeps its workers and status, one warning
is logged per pool when the outage starts and one line when it ends, and the count goes to
``tide_operator_api_failures_total``. A transient answer (401/403 while a restarted server's
caches sync, 429, 5xx) is held the same way for ``API_ERROR_GRACE`` seconds and
``API_ERROR_TICKS`` ticks in a row before ``Ready`` turns False. A metrics outage costs one
status write, when ``Ready`` turns False: the policy's reasons carry no running count.

Worker pods are watched too (those of owned Deployments, which carry the pool's label, and
those of adopted Deployments, found by the Deployment's selector): a pod deleted, being
deleted or failed (evicted, its node lost) is handed to
``tide_celery.recovery.Recoveries`` under its worker's node name (``worker@<pod name>``), so
on Redis what it held unacknowledged is back in its queues seconds after the death shows,
fenced by the worker's lease; the outcome is counted per queue
(``tide_workerpool_recovered_messages_total``) and posted as an Event on the pool
(``WorkerRecovered``, or ``WorkerLeaseHeld`` when the worker keeps renewing its lease: it
lives, and keeps its messages). See docs/recovery.md.

Everything is registered on an explicit ``kopf.OperatorRegistry`` built by
``build_registry``, so tests and the benchmark load the same handlers with their own login
(the API emulator) and busy-worker probe, and ``kopf run`` is never needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import httpx
import kopf
from pydantic import ValidationError

from tide_celery.recovery import Recovered, Recoveries
from tide_operator.adapters.credentials import Credentials, LoginFailed
from tide_operator.adapters.credentials import login as login_with_kubernetes_package
from tide_operator.adapters.kube import ApiError, KubeApi, NotFound, Unreachable
from tide_operator.adapters.leases import LeaseElector, LeaseSettings
from tide_operator.adapters.sources import MetricSource, SharedQueries, SharedScrapes, source_for
from tide_operator.adapters.targets import (
    BusyProbe,
    CeleryInspectProbe,
    DeploymentTarget,
    TargetUnavailable,
    WorkerFactsCache,
    WorkerProbe,
    ensure_owned_deployment,
)
from tide_operator.adapters.workloads import SharedLists, Workloads, trim_deployment, trim_pod
from tide_operator.core.policy import PolicyState
from tide_operator.edge.metrics import OperatorMetrics
from tide_operator.edge.pools import PoolHandle, PoolLoops
from tide_operator.reconcile.step import PoolEvent, StepResult, failed_step, reconcile_step
from tide_operator.resources.deployments import LABEL_POOL, deployment_name, worker_hostname
from tide_operator.resources.spec import GROUP, PLURAL, VERSION, MetricsSpec, WorkerPool
from tide_operator.resources.status import (
    API_ERROR,
    INVALID_SPEC,
    WORKER_LEASE_HELD,
    WORKER_RECOVERED,
    status_changed,
)

__all__ = [
    "LoginFn",
    "Runtime",
    "build_registry",
    "default_login",
    "kopf_session",
    "make_settings",
    "recoveries_from_env",
]

log = logging.getLogger(__name__)

# Resolves the operator's credentials; blocking (files, maybe an exec plugin), so it runs in
# a thread. ``tide operator`` binds its --kubeconfig/--context; tests give the emulator's.
LoginFn = Callable[[], Credentials]

# Seconds between ticks of a pool whose spec cannot be parsed (no pollingInterval to obey).
INVALID_SPEC_RETRY = 30.0
# The API server's answer to a write its validation refuses (Status reason Invalid).
INVALID: Final = 422
# How often a pool's loop checks that its pool and its Deployment still exist (a re-listed
# watch does not report deletions it missed), and how long loops get to finish a tick at the
# exit. The check reads one LIST per namespace and resource, shared by every pool in it.
EXISTENCE_CHECK_SECONDS: Final = 300.0
STOP_TIMEOUT: Final = 10.0
LEGACY_FINALIZER: Final = "tide.dev/operator"
# Seconds between start-up attempts while the API server does not answer.
STARTUP_RETRY: Final = 10.0
CRD_MISSING: Final = (
    f"the WorkerPool resource ({PLURAL}.{GROUP}/{VERSION}) is not served by this cluster: "
    "install its CRD (kubectl apply -f manifests/crds/, or the chart with crds.enabled=true), "
    "then start the operator again"
)
# How long transient API errors (401, 403, 429, 5xx) must last, in seconds and in ticks in a
# row, before the pool's Ready condition says so (see _persistent_api_error).
API_ERROR_GRACE = 30.0
API_ERROR_TICKS = 2
# Worker pod losses a standby remembers for a takeover (the oldest are dropped).
MISSED_LOSSES: Final = 1000
# The status field naming the replica that acts (the Lease's holderIdentity).
ACTING_REPLICA: Final = "actingReplica"


def default_login() -> Credentials:
    """$KUBECONFIG, else the pod's service account, else ~/.kube/config (kubectl's order)."""
    return login_with_kubernetes_package()


def kopf_session(credentials: Credentials, authorization: str | None) -> kopf.AiohttpSession:
    """kopf's HTTP session with the operator's own TLS context and header.

    kopf would otherwise rebuild the TLS context from a ``ConnectionInfo``, writing the
    client key to a temporary file of its own; handing it the context built at login keeps
    one identity for both clients and the key off the filesystem. kopf closes the session
    when it logs in again (after a 401, with a fresh header).
    """
    connector = aiohttp.TCPConnector(
        limit=0, ssl=credentials.ssl_context if credentials.ssl_context is not None else True
    )
    session = aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": authorization} if authorization else None,
        proxy=credentials.proxy,
    )
    return kopf.AiohttpSession(server=credentials.server, aiohttp_session=session)


# Watches end on the server after WATCH_SERVER_TIMEOUT seconds and are reopened from the
# last resourceVersion; the client gives up WATCH_CLIENT_GRACE seconds later (a watch a proxy
# or load balancer silently dropped would otherwise leave the operator blind forever). The
# server timeout is an int: kopf sends ``str(server_timeout)`` as ``timeoutSeconds``, an
# integer query parameter, and a real API server refuses "300.0" with a 400 that kills
# every watch.
WATCH_SERVER_TIMEOUT: Final = 300
WATCH_CLIENT_GRACE: Final = 30
CONNECT_TIMEOUT: Final = 30.0


def make_settings() -> kopf.OperatorSettings:
    """kopf settings of ``tide operator``, and of the tests, which run exactly these."""
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT + WATCH_CLIENT_GRACE
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    # No handler needs a finalizer (see pools.py); naming the one earlier versions put on
    # pools lets kopf remove it from them, so their deletion no longer waits for us.
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tide.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="tide.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # No cluster scanning: kopf would otherwise list and watch every namespace (even with
    # --namespace) and every CRD, which the chart's least-privilege Role does not grant: 27
    # 403s and ~55 s of retries at each start before falling back. The operator serves one
    # resource in the namespaces it is given; a CRD installed later is found by a restart
    # (``crd_installed`` stops the operator with a clear message while it is missing).
    settings.scanning.disabled = True
    # One replica, no peering objects to create or RBAC to grant for them.
    settings.peering.standalone = True
    return settings


@dataclass
class Runtime:
    """What the handlers share: the API client, the metrics HTTP client and its shared
    scrapes, probe, metrics."""

    metrics: OperatorMetrics
    login: LoginFn = default_login
    busy_probe: BusyProbe | None = None
    #: Asks workers what they really run, for SafeScaleIn (the same Celery probe, usually).
    worker_probe: WorkerProbe | None = None
    settings: kopf.OperatorSettings = field(default_factory=make_settings)
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # One exporter scrape serves every pool reading the same URL within half a second.
    scrapes: SharedScrapes = field(default_factory=SharedScrapes)
    # One PromQL query per series serves every pool reading the same Prometheus.
    queries: SharedQueries = field(default_factory=SharedQueries)
    #: Deployments and pods as the watches (kopf's indexes) know them, plus our own writes.
    workloads: Workloads = field(default_factory=Workloads)
    #: The LISTs behind the pools' periodic existence checks, one per namespace and resource.
    listings: SharedLists = field(
        default_factory=lambda: SharedLists(max_age=EXISTENCE_CHECK_SECONDS / 2)
    )
    #: Builds the API client from the credentials (the benchmark swaps in the official
    #: client's transport to compare the two; see docs/operator.md, "Design").
    api_factory: Callable[[Credentials], KubeApi] = KubeApi
    _credentials: Credentials | None = None
    _api: KubeApi | None = None
    _http: httpx.AsyncClient | None = None
    _lock: asyncio.Lock | None = None
    #: The pools' loops, once ``build_registry`` has bound them to this runtime.
    loops: PoolLoops | None = None
    #: Puts back what dead worker pods held (Redis brokers); None: the operator knows no
    #: broker, and the transport's visibility timeout applies.
    recoveries: Recoveries | None = None
    #: The Lease that elects the acting replica (``adapters/leases.py``); None: this
    #: process always acts (local tools that run the handlers on their own).
    lease: LeaseSettings | None = None
    elector: LeaseElector | None = None
    _lease_task: asyncio.Task[None] | None = None
    #: Worker pods reported gone while this replica stood by, recovered if it takes over
    #: (a node lost with the acting replica on it takes that replica's watch with it).
    _missed_losses: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def remember_loss(self, hostname: str, reason: str, key: Any) -> None:
        """A worker pod gone while standing by; forgotten after ``MISSED_LOSSES``."""
        self._missed_losses[hostname] = (reason, key)
        while len(self._missed_losses) > MISSED_LOSSES:
            del self._missed_losses[next(iter(self._missed_losses))]

    def acting(self) -> bool:
        """Whether this replica may scale, write statuses and post Events now."""
        return self.elector is None or self.elector.holding

    @property
    def identity(self) -> str | None:
        return self.lease.identity if self.lease is not None else None

    def lease_changed(self, acting: bool) -> None:
        """The elector's news: count it, show it, and wake the pools at a takeover."""
        identity = self.identity or ""
        self.metrics.acting.labels(identity).set(1 if acting else 0)
        if not acting:
            return
        self.metrics.lease_acquisitions.inc()
        if self.loops is not None:
            self.loops.wake_all()
        if self.recoveries is not None:
            missed, self._missed_losses = self._missed_losses, {}
            for hostname, (reason, key) in missed.items():
                self.recoveries.lost(hostname, reason=reason, context=key)

    async def start_lease(self) -> None:
        """Try the Lease once (so a lone replica acts before its pools start), then keep
        trying in the background."""
        if self.lease is None or self.elector is not None:
            return
        elector = self.elector = LeaseElector(self.lease, self.api, on_change=self.lease_changed)
        self.metrics.acting.labels(self.lease.identity).set(0)
        with contextlib.suppress(ApiError, Unreachable, TimeoutError):
            async with asyncio.timeout(self.lease.acting_window):
                await elector.step()
        self._lease_task = asyncio.create_task(elector.run(), name="operator lease")

    async def stop_lease(self) -> None:
        """Stop renewing and release the Lease (after the pools' loops have stopped)."""
        elector, task = self.elector, self._lease_task
        if elector is None:
            return
        elector.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._lease_task = None
        await elector.release()

    async def credentials(self) -> Credentials:
        """Log in once; kopf's re-logins refresh the header, not the whole login."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._credentials is None:
                try:
                    self._credentials = await asyncio.to_thread(self.login)
                except LoginFailed as exc:
                    raise kopf.LoginError(str(exc)) from exc
                found = self._credentials
                log.info("logged in to %s with the %s", found.server, found.source)
            return self._credentials

    async def api(self) -> KubeApi:
        credentials = await self.credentials()
        if self._api is None:
            self._api = self.api_factory(credentials)
        return self._api

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            # Shared by every pool's metric source: one connection pool for all reads.
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=50)
            )
        return self._http

    async def close(self) -> None:
        if self._api is not None:
            await self._api.aclose()
            self._api = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _pool_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def _status_path(namespace: str, name: str) -> str:
    return _pool_path(namespace, name) + "/status"


def _post(body: Any, event: PoolEvent) -> None:
    # An Event is read on its own (kubectl describe, an events exporter): never empty.
    message = event.message.strip() or f"{event.reason} (no details given)"
    kopf.event(body, type=event.type, reason=event.reason, message=message[:1000])


@dataclass
class _Pool:
    """One pool's loop-local memory."""

    state: PolicyState = field(default_factory=PolicyState)
    status: Mapping[str, Any] | None = None
    source: MetricSource | None = None
    source_spec: MetricsSpec | None = None
    workers: WorkerFactsCache = field(default_factory=WorkerFactsCache)
    # Workers cordoned or reopened by this loop, until the pod index shows it.
    cordons: dict[str, bool] = field(default_factory=dict)
    # The live spec's pollingInterval, for ticks that fail before they return one.
    interval: float = INVALID_SPEC_RETRY
    # Trouble with the API server (loop time): since when this pool's ticks fail on it
    # (None: they do not), and since when and how many ticks in a row the server *answered*
    # with a transient error (403, 5xx), which is what the grace before Ready=False counts.
    trouble_since: float | None = None
    errors_since: float | None = None
    errors_in_a_row: int = 0
    # Whether the last tick was a standby's (this replica did not hold the Lease).
    standing_by: bool = False
    # The size the last standby tick read (the acting replica's), to see it move.
    shadow_size: int | None = None

    def trouble(self, *, namespace: str, name: str, now: float, what: str) -> None:
        """Remember an API failure; the first of an outage is the one logged line."""
        if self.trouble_since is None:
            self.trouble_since = now
            log.warning(
                "WorkerPool %s/%s: %s; its workers and status stay as they are, retrying every %gs",
                namespace,
                name,
                what,
                self.interval,
            )

    def recovered(self, *, namespace: str, name: str, now: float) -> None:
        """A tick went through: one line if it ends an outage."""
        if self.trouble_since is not None:
            log.info(
                "WorkerPool %s/%s: the Kubernetes API answers again after %.0fs",
                namespace,
                name,
                now - self.trouble_since,
            )
        self.trouble_since = self.errors_since = None
        self.errors_in_a_row = 0


async def _tick(runtime: Runtime, pool_memory: _Pool, body: Any) -> tuple[StepResult, float]:
    """One reconcile of one pool: (result, seconds until the next)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    generation = meta.get("generation")
    wall = runtime.wall_clock()
    now = asyncio.get_running_loop().time()
    try:
        pool = WorkerPool.from_body(body)
    except ValidationError as exc:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        result = failed_step(
            state=pool_memory.state,
            previous_status=pool_memory.status,
            generation=generation,
            wall=wall,
            reason=INVALID_SPEC,
            message=message,
        )
        return result, INVALID_SPEC_RETRY

    spec = pool.spec
    pool_memory.interval = spec.polling_interval
    api = await runtime.api()
    if pool_memory.source is None or pool_memory.source_spec != spec.metrics:
        pool_memory.source = source_for(
            spec.metrics, client=runtime.http(), shared=runtime.scrapes, queries=runtime.queries
        )
        pool_memory.source_spec = spec.metrics
    target = DeploymentTarget(
        api,
        namespace=namespace,
        name=deployment_name(pool),
        busy_probe=runtime.busy_probe,
        worker_probe=runtime.worker_probe,
        facts_cache=pool_memory.workers,
        adopted=not spec.owned,
        workloads=runtime.workloads,
        cordon_writes=pool_memory.cordons,
    )
    try:
        if spec.owned:
            live, _ = await ensure_owned_deployment(
                api, pool, initial_replicas=spec.min_replicas, workloads=runtime.workloads
            )
            target.prime(live)
        result = await reconcile_step(
            spec=spec,
            source=pool_memory.source,
            target=target,
            state=pool_memory.state,
            now=now,
            wall=wall,
            previous_status=pool_memory.status,
            generation=generation,
            selector=target.selector_string(),
            stored_status=body.get("status"),
        )
    except TargetUnavailable as exc:
        result = failed_step(
            state=pool_memory.state,
            previous_status=pool_memory.status,
            generation=generation,
            wall=wall,
            reason=exc.reason,
            message=exc.message,
            spec=spec,
        )
    except ApiError as exc:
        if exc.transient:
            raise  # the loop holds through it for a while (API_ERROR_GRACE)
        result = failed_step(
            state=pool_memory.state,
            previous_status=pool_memory.status,
            generation=generation,
            wall=wall,
            reason=API_ERROR,
            message=str(exc),
            spec=spec,
        )
    return result, spec.polling_interval


class _Watched:
    """A pool's Deployment as the watch shows it, for a replica that does not act: it reads
    the size the acting replica set and never writes (``scale`` and the marks do nothing)."""

    def __init__(self, runtime: Runtime, namespace: str, name: str) -> None:
        self.workloads = runtime.workloads
        self.namespace = namespace
        self.name = name

    async def current(self) -> int:
        found = self.workloads.deployment(self.namespace, self.name)
        if found is None:
            raise TargetUnavailable(
                "TargetNotFound", f"Deployment {self.namespace}/{self.name} not found"
            )
        replicas = (found.get("spec") or {}).get("replicas")
        return 1 if replicas is None else int(replicas)

    async def scale(self, replicas: int, *, reason: str) -> None:
        return None

    async def mark_idle_first(self, count: int) -> None:
        return None


async def _shadow(runtime: Runtime, memory: _Pool, body: Any) -> float:
    """A standby's tick: keep the policy's memory warm, write nothing.

    The standby reads the queues (one shared query per source, as the acting replica does)
    and the size the acting replica set (from the watch), and runs the same decision, but
    keeps only the policy's state. So at a takeover the new holder decides with the
    history, rates and stabilisation windows the old one had, instead of starting afresh,
    and does not scale where the old holder would not have. The stored status is taken as
    the last one written, so conditions already announced are not announced again.
    """
    memory.status = dict(body.get("status") or {}) or None
    if not runtime.workloads.watching:
        return memory.interval
    try:
        pool = WorkerPool.from_body(body)
    except ValidationError:
        return INVALID_SPEC_RETRY
    spec = pool.spec
    memory.interval = spec.polling_interval
    if memory.source is None or memory.source_spec != spec.metrics:
        memory.source = source_for(
            spec.metrics, client=runtime.http(), shared=runtime.scrapes, queries=runtime.queries
        )
        memory.source_spec = spec.metrics
    now = asyncio.get_running_loop().time()
    # The size the previous standby tick saw; none after an acting tick (nothing to compare).
    seen = memory.shadow_size if memory.standing_by else None
    result = await reconcile_step(
        spec=spec,
        source=memory.source,
        target=_Watched(runtime, pool.namespace, deployment_name(pool)),
        state=memory.state,
        now=now,
        wall=runtime.wall_clock(),
        previous_status=memory.status,
        generation=pool.generation,
        stored_status=body.get("status"),
    )
    if result.decision is not None:
        # A standby scales nothing, so the scale events it keeps (what the step limits
        # count) are the moves it saw the acting replica make, not its own decisions: when
        # no replica acts (the holder just died, or this one lost the Lease in an API
        # outage) those were never carried out, and counted as made they held back the
        # first real scale-up after the takeover by up to a policy period (the chaos
        # bench: 4 s of a 10 s period after a SIGKILL, 8 s after an API outage).
        events = memory.state.scale_events
        if seen is not None and result.current is not None and result.current != seen:
            events = (*events, (now, result.current - seen))
        memory.state = replace(result.state, scale_events=events)
    memory.shadow_size = result.current
    return spec.polling_interval


async def _persistent_api_error(
    runtime: Runtime, memory: _Pool, body: Any, exc: ApiError, *, now: float
) -> None:
    """Count a transient API error; report it on the status once it has lasted.

    A restarted API server answers 401/403 until its authenticator and RBAC caches have
    synced (seconds), and 5xx while etcd or a webhook recovers. Flipping ``Ready`` on the
    first such answer would page people and fail ``helm upgrade --wait`` for nothing, so
    the pool keeps its status until the errors have run for ``API_ERROR_GRACE`` seconds
    *and* ``API_ERROR_TICKS`` ticks in a row (a pool polled every minute is not reported
    on one answer either); then ``Ready=False/ApiError`` with the server's message.
    """
    if memory.errors_since is None:
        memory.errors_since = now
    memory.errors_in_a_row += 1
    if now - memory.errors_since < API_ERROR_GRACE or memory.errors_in_a_row < API_ERROR_TICKS:
        return
    result = failed_step(
        state=memory.state,
        previous_status=memory.status,
        generation=body["metadata"].get("generation"),
        wall=runtime.wall_clock(),
        reason=API_ERROR,
        message=str(exc),
    )
    # The write may be refused too; the next tick tries again, and the log has the cause.
    with contextlib.suppress(ApiError, Unreachable):
        await _report(runtime, memory, body, result)


async def _exists(runtime: Runtime, handle: PoolHandle) -> bool:
    """Whether the pool of this loop is still there (the same object: same uid).

    The watches report deletions, except those made while a watch was down long enough to
    be re-listed (kopf does not report what the new listing lacks). So now and then each
    loop looks for its pool, and for its Deployment if the index still holds it, in a LIST
    of its namespace that every pool there shares; only something the LIST lacks is
    confirmed with a GET (it may have been created after the LIST was served).
    """
    namespace, name = handle.key
    api = await runtime.api()
    pools_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    pools = await runtime.listings.names(pools_path, fetch=lambda: api.list(pools_path))
    if pools.get(name) != handle.uid:
        try:
            found = await api.get(_pool_path(namespace, name))
        except NotFound:
            return False
        if found.get("metadata", {}).get("uid") != handle.uid:
            return False
    workloads = runtime.workloads
    if workloads.watching:
        try:
            pool = WorkerPool.from_body(handle.body)
        except ValidationError:
            return True
        target = deployment_name(pool)
        if workloads.deployment(namespace, target) is not None:
            path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
            listed = await runtime.listings.names(path, fetch=lambda: api.list(path))
            if target not in listed:
                try:
                    await api.get(f"{path}/{target}")
                except NotFound:
                    workloads.vanished(namespace, target)
    return True


async def _run_pool(runtime: Runtime, handle: PoolHandle) -> None:
    """One pool's loop: tick, report, sleep ``pollingInterval``; until told to stop."""
    namespace, name = handle.key
    memory = _Pool(status=dict(handle.body.get("status") or {}) or None)
    loop = asyncio.get_running_loop()
    checked = loop.time()
    try:
        while not handle.stopping:
            started = loop.time()
            interval = INVALID_SPEC_RETRY
            try:
                if started - checked >= EXISTENCE_CHECK_SECONDS:
                    checked = started
                    if not await _exists(runtime, handle):
                        handle.stop(deleted=True)
                        break
                body = handle.body
                if not runtime.acting():
                    # Standing by: no request, no write; the policy's memory kept warm.
                    interval = await _shadow(runtime, memory, body)
                    memory.standing_by = True
                else:
                    if memory.standing_by:
                        # Taken over: what the last holder wrote (the watch's latest) is
                        # what this replica's first status and Events are compared with.
                        memory.status = dict(body.get("status") or {}) or None
                        memory.standing_by = False
                    result, interval = await _tick(runtime, memory, body)
                    if handle.stopping:
                        break  # deleted during the tick: nothing more to say about it
                    await _report(runtime, memory, body, result)
                    memory.recovered(namespace=namespace, name=name, now=loop.time())
            except Unreachable as exc:
                # Nothing was said about the pool: hold everything, log once per outage.
                runtime.metrics.api_failures.labels("unreachable").inc()
                memory.trouble(namespace=namespace, name=name, now=started, what=str(exc))
                interval = memory.interval
            except ApiError as exc:  # only transient ones get here (see _tick)
                runtime.metrics.api_failures.labels(str(exc.status)).inc()
                memory.trouble(
                    namespace=namespace, name=name, now=started, what=f"the API answered {exc}"
                )
                await _persistent_api_error(runtime, memory, handle.body, exc, now=started)
                interval = memory.interval
            except Exception:  # a bug must not end the pool's scaling
                log.exception("reconcile of %s/%s failed; retrying", namespace, name)
                interval = min(interval, 5.0)
            finally:
                runtime.metrics.reconcile_duration.observe(loop.time() - started)
            await handle.sleep(interval - (loop.time() - started))
    finally:
        if handle.deleted:
            runtime.metrics.forget(namespace, name)


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers, bound to ``runtime``."""
    registry = kopf.OperatorRegistry()
    loops = runtime.loops = PoolLoops(lambda handle: _run_pool(runtime, handle))

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        credentials = await runtime.credentials()
        # kopf logs in again after a 401: a fresh header, not the one that was refused.
        return kopf_session(credentials, await credentials.authorization(force=True))

    @kopf.on.startup(registry=registry)
    async def crd_installed(**_: Any) -> None:
        # With cluster scanning off, kopf would start without the resource and serve
        # nothing, silently, until a restart. Discovery needs no RBAC (system:discovery).
        api = await runtime.api()
        try:
            discovery = await api.get(f"/apis/{GROUP}/{VERSION}")
        except NotFound:
            discovery = {}
        except Unreachable as exc:
            # The API server may be restarting: kopf retries, with one line per attempt
            # (a temporary error carries no traceback).
            raise kopf.TemporaryError(f"{exc}; retrying", delay=STARTUP_RETRY) from exc
        if not any(r.get("name") == PLURAL for r in discovery.get("resources") or []):
            raise kopf.PermanentError(CRD_MISSING)

    @kopf.on.startup(registry=registry)
    async def lease(**_: Any) -> None:
        # After crd_installed (kopf runs startup handlers in order), before the watches.
        await runtime.start_lease()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await loops.stop_all(timeout=STOP_TIMEOUT)
        # Released only once no loop can write any more: the next holder starts clean.
        await runtime.stop_lease()
        await runtime.close()

    # The pools read their Deployments and pods from these indexes, which kopf fills from
    # its watches before any other handler runs (adapters/workloads.py says more).
    @kopf.index("apps", "v1", "deployments", id="tide_deployments", registry=registry)
    def tide_deployments(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
        trimmed = trim_deployment(body)
        meta = trimmed["metadata"]
        return {(meta.get("namespace"), meta.get("name")): trimmed}

    @kopf.index("", "v1", "pods", id="tide_pods", registry=registry)
    def tide_pods(body: kopf.Body, **_: Any) -> dict[str, Any]:
        trimmed = trim_pod(body)
        return {trimmed["metadata"]["namespace"]: trimmed}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def workerpool(event: kopf.RawEvent, **kwargs: Any) -> None:
        if not runtime.workloads.watching:
            # kopf hands its indexes to every handler by name.
            runtime.workloads.bind(deployments=kwargs["tide_deployments"], pods=kwargs["tide_pods"])
        # Only bookkeeping here: the pool's loop (started by the first event) does the work.
        loops.observe(event.get("type"), event["object"])

    # Every pod, not only those with the pool label: an adopted Deployment's pods carry its
    # own labels. kopf watches pods once for the index and this handler; the work below
    # starts only for a pod that is gone (pod_gone), and costs one look over the pools.
    @kopf.on.event("", "v1", "pods", registry=registry)
    async def worker_pod(event: kopf.RawEvent, **_: Any) -> None:
        pod = event["object"]
        reason = pod_gone(event.get("type"), pod)
        if reason is None or runtime.recoveries is None:
            return
        key = pool_of_pod(runtime, pod)
        if key is None:
            return  # not a worker of a pool this operator serves
        meta = pod.get("metadata") or {}
        hostname = worker_hostname(meta.get("name") or "")
        if not runtime.acting():
            # The acting replica recovers it; kept in case this one takes over first.
            runtime.remember_loss(hostname, reason, key)
            return
        runtime.recoveries.lost(hostname, reason=reason, context=key)

    return registry


def pool_of_pod(runtime: Runtime, pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The served pool whose worker ``pod`` runs, or None.

    A pod of an owned Deployment carries the pool's label. A pod of an adopted Deployment
    (``scaleTargetRef``) carries that Deployment's labels only: it belongs to the pool of its
    namespace whose Deployment's selector (``matchLabels``, as the watch or the operator's
    last write knows it) its labels match.
    """
    loops = runtime.loops
    if loops is None:
        return None
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    labels: Mapping[str, str] = meta.get("labels") or {}
    if LABEL_POOL in labels:
        key = (namespace, str(labels[LABEL_POOL]))
        return key if key in loops else None
    if not runtime.workloads.watching:
        return None
    for key, body in loops.in_namespace(namespace):
        target = ((body.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
        if not target:
            continue
        deployment = runtime.workloads.deployment(namespace, str(target))
        selector = (((deployment or {}).get("spec") or {}).get("selector") or {}).get(
            "matchLabels"
        ) or {}
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            return key
    return None


def pod_gone(event_type: str | None, pod: Mapping[str, Any]) -> str | None:
    """Why a worker pod is gone for good, or None while it may still run its worker.

    Deleted, being deleted (graceful deletion, or the node controller evicting the pods of
    a lost node), or failed (evicted, its containers ended): each is a report of death,
    which recovery checks against the worker's lease before it moves anything.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if event_type == "DELETED":
        return "pod deleted"
    if meta.get("deletionTimestamp"):
        return "pod being deleted"
    if status.get("phase") == "Failed":
        detail = status.get("reason") or status.get("message") or ""
        return f"pod failed ({detail})" if detail else "pod failed"
    return None


def _report_recovery(runtime: Runtime, result: Recovered, reason: str, key: Any) -> None:
    """Count and say what a recovery did, on the pool the dead worker belonged to."""
    namespace, name = key
    runtime.metrics.record_recovery(namespace, name, result.restored)
    body = runtime.loops.body(key) if runtime.loops is not None else None
    if body is None or not runtime.acting():
        return
    if result.restored:
        _post(
            body,
            PoolEvent(
                type="Warning",
                reason=WORKER_RECOVERED,
                message=f"{result.node} gone ({reason}): {result.describe()}",
            ),
        )
    elif result.leased:
        _post(
            body,
            PoolEvent(
                type="Warning",
                reason=WORKER_LEASE_HELD,
                message=(
                    f"{result.node} reported gone ({reason}) but still renews its lease: "
                    f"its {result.leased} message(s) stay with it"
                ),
            ),
        )


def recoveries_from_env(
    runtime: Runtime, environ: Mapping[str, str] | None = None
) -> Recoveries | None:
    """Recovery on the workers' broker (``CELERY_BROKER_URL``, their transport options)."""
    probe = busy_probe_from_env(environ)
    env = os.environ if environ is None else environ
    url = env.get("CELERY_BROKER_URL")
    if probe is None or not url:
        return None
    return recoveries_for(runtime, url, transport_options=probe.transport_options)


def recoveries_for(
    runtime: Runtime, url: str, *, transport_options: Mapping[str, Any]
) -> Recoveries:
    """Recovery on the broker at ``url``, reporting to ``runtime``'s metrics and pools."""
    return Recoveries(
        url,
        transport_options=transport_options,
        on_recovered=lambda result, reason, key: _report_recovery(runtime, result, reason, key),
    )


async def _report(runtime: Runtime, memory: _Pool, body: Any, result: StepResult) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    memory.state = result.state
    paused = bool((body.get("spec") or {}).get("paused", False))
    runtime.metrics.record(namespace, name, result, paused=paused)
    if not runtime.acting():
        return  # the Lease was lost during the tick: the new holder reports
    status = result.status
    if runtime.identity is not None:
        status = {**status, ACTING_REPLICA: runtime.identity}
    for event in result.events:
        _post(body, event)
    if status_changed(memory.status, status):
        api = await runtime.api()
        try:
            await api.patch(_status_path(namespace, name), {"status": status})
        except NotFound:
            return  # the pool was deleted meanwhile; its loop is being stopped
        except ApiError as exc:
            if exc.status != INVALID:
                raise
            # 422: the server holds a pool its CRD now refuses (admitted by an older CRD and
            # kept through the upgrade; seen on kube-apiserver v1.26, which validates the
            # whole object again on every write, a status write too). Nothing can land on it
            # until its spec is fixed, which makes a new status. The Events posted above say
            # why; taking the status as said keeps the write and the Events from repeating
            # every tick (they did: a refused write and a new Event per tick).
            log.warning(
                "the status of WorkerPool %s/%s cannot be written (%s); fix its spec",
                namespace,
                name,
                exc,
            )
        memory.status = status


def busy_probe_from_env(environ: Mapping[str, str] | None = None) -> CeleryInspectProbe | None:
    """A Celery inspect probe when the operator knows the broker, else none (no marking).

    The workers' transport options come from ``TIDE_BROKER_TRANSPORT_OPTIONS`` (a JSON
    object, the same variable the exporter and Flower read; one parser,
    ``tide_celery.layout``), and ``CELERY_BROKER_KEYPREFIX`` over them, as Tide's settings
    take it. Nothing else is added: kombu's defaults are what a stock app runs, and a
    layout of Tide's own would break remote control with it.
    """
    from tide_celery.layout import transport_options_from_env

    env = os.environ if environ is None else environ
    url = env.get("CELERY_BROKER_URL")
    if not url:
        return None
    options = transport_options_from_env(environ=env) or {}
    # The same variable Tide's settings read for a shared Redis (see docs/configuration.md).
    prefix = env.get("CELERY_BROKER_KEYPREFIX")
    if prefix:
        options["global_keyprefix"] = prefix
    return CeleryInspectProbe(url, transport_options=options)
