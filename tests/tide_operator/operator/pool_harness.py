"""The operator tests' harness: API emulator, fake exporter, kopf in this loop, helpers.

kopf runs as a task in the test's own event loop (``kopf.operator``), so ``looptime`` fakes
its clock: polling intervals and stabilisation windows pass in milliseconds of real time.
The exporter is a real HTTP server on loopback serving a mutable exposition, so the
operator's ``ExporterSource`` is exercised as in production. Waiting is always on state,
with a deadline (``eventually``), never a fixed sleep.

The operator runs as the chart installs it: kopf's settings are the ones ``tide operator``
ships (``make_settings()``, nothing overridden), it watches one namespace (the chart's
default scope; ``cluster_operator`` watches all), and the emulator holds its requests to the
real API's contract and to the RBAC rules the chart renders for its service account. Any
breach fails the test in the emulator fixture's teardown, and every request the operator
made is added to the session's ``usage``, which ``test_operator_rbac`` compares with the
chart's Role and ClusterRole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import kmock
import kopf
import pytest
import pytest_asyncio
from aiohttp import web
from kube_emulator import OPERATOR_TOKEN, WORKERPOOLS, TideEmulator
from kube_rbac import Grants, render_chart

from tide_operator.adapters.credentials import Credentials
from tide_operator.adapters.kube import KubeApi
from tide_operator.adapters.targets import BusyProbe, WorkerProbe
from tide_operator.edge.handlers import LoginFn, Runtime, build_registry
from tide_operator.edge.metrics import OperatorMetrics

T = TypeVar("T")
NS = "default"
DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
EVENTS = "v1/events"


async def eventually(
    probe: Callable[[], T | Awaitable[T | None] | None], *, timeout: float = 60.0, what: str = ""
) -> T:
    """Poll ``probe`` (in loop time) until truthy; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s (loop time) waiting for {what or probe}")
        await asyncio.sleep(0.05)


class FakeExporter:
    """Serves ``celery_queue_*`` text for the queues set on it; ``down`` answers 503."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, float]] = {}
        self.down = False
        self.url = ""
        self.scrapes = 0
        # celery_queue_completed_total per queue, and how much it grows per scrape (absent
        # from the text until a queue is given a rate).
        self.completed: dict[str, float] = {}
        self.completed_per_scrape: dict[str, float] = {}

    def set(self, queue: str, *, waiting: int = 0, inflight: int = 0, oldest: float = 0.0) -> None:
        self.queues[queue] = {"waiting": waiting, "inflight": inflight, "oldest": oldest}

    def complete(self, queue: str, *, per_scrape: float) -> None:
        """Serve a completion counter for ``queue`` that grows by ``per_scrape`` per scrape."""
        self.completed.setdefault(queue, 0.0)
        self.completed_per_scrape[queue] = per_scrape

    def text(self) -> str:
        lines = []
        for name, series in (
            ("celery_queue_length", "waiting"),
            ("celery_queue_inflight", "inflight"),
            ("celery_queue_scheduled", None),
            ("celery_queue_oldest_age_seconds", "oldest"),
        ):
            lines.append(f"# TYPE {name} gauge")
            for queue, figures in self.queues.items():
                value = figures[series] if series else 0
                lines.append(f'{name}{{queue_name="{queue}"}} {value}')
        if self.completed:
            lines.append("# TYPE celery_queue_completed_total counter")
            for queue, total in self.completed.items():
                lines.append(f'celery_queue_completed_total{{queue_name="{queue}"}} {total}')
        lines += ["# TYPE tide_exporter_stale gauge", "tide_exporter_stale 0", ""]
        return "\n".join(lines)

    async def handle(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        if self.down:
            return web.Response(status=503, text="broker down")
        for queue, step in self.completed_per_scrape.items():
            self.completed[queue] += step
        return web.Response(text=self.text(), content_type="text/plain")


class FakeBusyProbe:
    """Tasks held per Celery node name; unknown names answer 0 (idle)."""

    def __init__(self) -> None:
        self.busy_by_host: dict[str, int | None] = {}
        self.asked: list[list[str]] = []

    async def busy(self, hostnames: Sequence[str]) -> Mapping[str, int | None]:
        self.asked.append(list(hostnames))
        return {h: self.busy_by_host.get(h, 0) for h in hostnames}


Scope = Literal["namespace", "cluster"]
# (API group, resource[/subresource], verb), as RBAC rules name what they grant.
Pair = tuple[str, str, str]


@dataclass
class Usage:
    """What the operator asked the API for across the session, per scope it ran in."""

    pairs: dict[Scope, set[Pair]] = field(
        default_factory=lambda: {"namespace": set(), "cluster": set()}
    )
    # Node ids of the tests that ran an operator; of every test of the folder collected,
    # and selected to run; the test files collected (see conftest.py's hooks).
    ran: set[str] = field(default_factory=set)
    collected: set[str] = field(default_factory=set)
    selected: set[str] = field(default_factory=set)
    collected_files: set[str] = field(default_factory=set)

    def whole_folder(self, folder: Path) -> bool:
        """Whether every test of the operator folder was collected and selected."""
        files = {p.name for p in folder.glob("test_*.py")}
        return files == self.collected_files and self.selected == self.collected

    def add(self, emulator: TideEmulator, scope: Scope, nodeid: str) -> None:
        self.ran.add(nodeid)
        for entry in emulator.operator_requests():
            if entry.address is not None:
                where = entry.address
                self.pairs[scope].add((where.group, where.resource, where.verb))


USAGE = Usage()


@functools.cache
def chart_objects(scope: Scope) -> tuple[dict[str, Any], ...]:
    """The chart rendered into namespace ``default`` (helm runs once per scope and session)."""
    return tuple(render_chart(NS, f"operator.scope={scope}"))


def operator_grants(scope: Scope) -> Grants:
    """RBAC the chart gives the operator's service account in ``scope``."""
    objects = chart_objects(scope)
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    return Grants.for_service_account(objects, namespace=NS, name=account)


@pytest_asyncio.fixture()
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[TideEmulator]:
    async with TideEmulator() as k8s, kmock.Server(k8s):
        yield k8s
    # Whatever the test asserted, a request a real server would refuse fails it.
    assert k8s.violations == [], "requests a real API server refuses:\n" + "\n".join(k8s.violations)
    # Every Event the operator posted says something (kubectl describe shows it alone).
    silent = [
        f"{e.get('reason')} on {e.get('involvedObject', {}).get('name')}"
        for e in events(k8s)
        if not str(e.get("message") or "").strip()
    ]
    assert silent == [], f"Events without a message: {silent}"
    assert k8s.forbidden == [], "requests the chart's RBAC does not grant:\n" + "\n".join(
        k8s.forbidden
    )


@pytest_asyncio.fixture()
async def exporter() -> AsyncIterator[FakeExporter]:
    fake = FakeExporter()
    app = web.Application()
    app.router.add_get("/metrics", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/metrics"
    yield fake
    await runner.cleanup()


@pytest.fixture
def probe() -> FakeBusyProbe:
    return FakeBusyProbe()


@pytest_asyncio.fixture()
async def api(emulator: TideEmulator) -> AsyncIterator[KubeApi]:
    client = KubeApi(Credentials(str(emulator.url)))
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def running_operator(
    emulator: TideEmulator,
    probe: BusyProbe,
    *,
    scope: Scope,
    nodeid: str,
    login: LoginFn | None = None,
    worker_probe: WorkerProbe | None = None,
) -> AsyncIterator[Runtime]:
    """``tide operator`` in this loop, as the chart runs it in ``scope``.

    It logs in straight to the emulator with ``OPERATOR_TOKEN``, or with ``login`` (the
    login tests' kubeconfigs, through ``ApiGateway``, which forwards as the operator).
    """
    emulator.authorize(operator_grants(scope))
    url = str(emulator.url)
    # No Lease here: looptime fakes the clock from the test's start, while kopf's startup
    # (and a renewal loop's first timer) ran on the real one in the fixture, so a Lease
    # would be renewed at fake second ~800. The Lease is exercised where clocks are real:
    # test_operator_ha.py (two ``tide operator`` processes) and test_leases.py.
    runtime = Runtime(
        metrics=OperatorMetrics(),
        login=login or (lambda: Credentials(url, authorization=f"Bearer {OPERATOR_TOKEN}")),
        busy_probe=probe,
        worker_probe=worker_probe,
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=build_registry(runtime),
            settings=runtime.settings,
            standalone=True,
            clusterwide=scope == "cluster",
            namespaces=[] if scope == "cluster" else [NS],
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        yield runtime
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, timeout=30)
        USAGE.add(emulator, scope, nodeid)


@pytest_asyncio.fixture()
async def operator(
    emulator: TideEmulator, probe: FakeBusyProbe, request: pytest.FixtureRequest
) -> AsyncIterator[Runtime]:
    """The operator in namespace scope (the chart's default), watching ``default``."""
    async with running_operator(
        emulator, probe, scope="namespace", nodeid=request.node.nodeid
    ) as runtime:
        yield runtime


@pytest_asyncio.fixture()
async def cluster_operator(
    emulator: TideEmulator, probe: FakeBusyProbe, request: pytest.FixtureRequest
) -> AsyncIterator[Runtime]:
    """The operator in cluster scope (``--all-namespaces``, the chart's ClusterRole)."""
    async with running_operator(
        emulator, probe, scope="cluster", nodeid=request.node.nodeid
    ) as runtime:
        yield runtime


# ----------------------------------------------------------------------------- builders


def pool_body(name: str, *, exporter_url: str, **spec: Any) -> dict[str, Any]:
    body_spec: dict[str, Any] = {
        "queues": ["default"],
        "metrics": {"exporter": {"url": exporter_url}},
        "template": {"image": "tide:test"},
    }
    body_spec.update(spec)
    if "scaleTargetRef" in spec:
        body_spec.pop("template")
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": body_spec,
    }


def deployment_body(name: str, *, replicas: int, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "worker", "image": "tide:test"}]},
            },
        },
    }


def pod_body(name: str, *, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels)},
        "spec": {"containers": [{"name": "worker", "image": "tide:test"}]},
    }


def obj(emulator: TideEmulator, resource: str, name: str) -> dict[str, Any] | None:
    try:
        found = emulator.objects[resource, NS, name]
    except KeyError:
        return None
    if found.deleted:
        return None
    raw: dict[str, Any] = found.raw
    return raw


def replicas(emulator: TideEmulator, name: str) -> int | None:
    found = obj(emulator, DEPLOYMENTS, name)
    return None if found is None else found.get("spec", {}).get("replicas")


def condition(emulator: TideEmulator, pool: str, type_: str) -> dict[str, Any] | None:
    found = obj(emulator, WORKERPOOLS, pool)
    for item in ((found or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return None


def events(emulator: TideEmulator, reason: str | None = None) -> list[dict[str, Any]]:
    result = []
    for (resource, _, _), item in emulator.objects.items():
        if item.deleted or getattr(resource, "plural", None) != "events":
            continue
        if reason is None or item.raw.get("reason") == reason:
            result.append(item.raw)
    return result
