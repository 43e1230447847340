"""The chaos bench's cluster of one machine: the operator, real workers and jobs together.

Nothing here runs pods, so the operator's faults are played on:

* the API emulator of the operator tests (``TideEmulator``: held to a real kube-apiserver's
  OpenAPI document and to the RBAC the chart grants the operator), behind ``ApiGateway``,
  which can close its port and drop every open connection (an unreachable API server);
* ``ProcessKubelet``: the worker Deployment's pods as real ``celery worker`` processes of
  Tide's reference app, named ``worker@<pod>`` as the chart names them;
* ``tide operator`` as a process of its own (the command the chart runs), logged in with a
  kubeconfig, with the broker settings the chart gives it (busy probe, dead-worker
  recovery), so it can be SIGKILLed and replaced;
* the real exporter (``tide exporter``) on the bench's Redis, and for the Prometheus
  scenario a real Prometheus (Debian's) scraping it every second.

The emulator, the gateway and the kubelet share one event loop in a thread of the bench
(``Cluster.call`` runs a coroutine there); the bench's own thread submits jobs and reads
the job rows with Django, as ``bench_faults.platform`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tide_operator" / "operator"))
sys.path.insert(0, str(ROOT / "tests" / "tide_operator" / "crd"))  # the CRD admission it uses

from api_gateway import ApiGateway  # noqa: E402
from kube_emulator import OPERATOR_TOKEN, WORKERPOOLS, TideEmulator  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from pool_harness import operator_grants  # noqa: E402
from process_kubelet import ProcessKubelet  # noqa: E402

from tide_operator.adapters.credentials import Credentials  # noqa: E402
from tide_operator.adapters.kube import KubeApi  # noqa: E402

T = TypeVar("T")
NS = "default"
POOL = "faults"
DEPLOYMENT = f"{POOL}-workers"
BIN = Path(sys.executable).parent
#: The token the operator shows the gateway (the gateway forwards as OPERATOR_TOKEN).
GATEWAY_TOKEN = "bench-operator"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(check: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class CeleryContainer:
    """A pod's worker process; ready once Celery logged that it is."""

    process: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool:
        try:
            return " ready." in self.log.read_text(errors="replace")
        except OSError:
            return False


class Exporter:
    """``tide exporter`` on the bench's broker, reading every second."""

    def __init__(self, env: dict[str, str], workdir: Path, *, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [str(BIN / "tide"), "exporter", "--host", "127.0.0.1", "--port", str(port),
             "--queues", "io,default", "--interval", "1"],
            env=env, stdout=(workdir / "exporter.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait(self._serves, 60, "the exporter to serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _serves(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


class Prometheus:
    """Debian's Prometheus scraping the exporter every second; stopped and started again
    on the same port and storage (what a restarted Prometheus pod does)."""

    def __init__(self, workdir: Path, *, port: int, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: apt-get install -y prometheus")
        self.binary = binary
        self.port = port
        self.dir = workdir / "prometheus"
        self.dir.mkdir(exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "tide-exporter",
                                "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config}",
             f"--storage.tsdb.path={self.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=(self.dir / "prometheus.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.dir / "prometheus.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"Prometheus exited ({self.process.returncode}): {log}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def has_series(self) -> bool:
        query = f"{self.url}/api/v1/query?query=celery_queue_length"
        try:
            with urllib.request.urlopen(query, timeout=2) as answer:
                return bool(json.loads(answer.read())["data"]["result"])
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def pool_body(metrics: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """The bench's pool: 1 to 4 workers of 4 slots, one worker more per 10 s at most (so
    a fault lands mid-scale), scale-in after 20 s without need, metrics every 2 s."""
    body: dict[str, Any] = {
        "queues": ["io", "default"],
        "concurrency": 4,
        "minReplicas": 1,
        "maxReplicas": 4,
        "pollingInterval": 2,
        "behavior": {
            "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]},
            "scaleDown": {
                "stabilizationWindowSeconds": 20,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
            },
        },
        "template": {"image": "tide:bench"},
        "metrics": metrics,
    }
    body.update(spec)
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": body,
    }


class Cluster:
    """The emulator, the gateway and the process kubelet in a loop thread; operators apart."""

    def __init__(self, *, env: dict[str, str], workdir: Path, start_worker: Callable[[str], Any]):
        # The emulator's and the gateway's access logs: one line per request, not wanted.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        self.env = env
        self.workdir = workdir
        self.start_worker = start_worker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cluster", daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()
        self.operators: list[OperatorProcess] = []
        self.emulator: TideEmulator
        self.gateway: ApiGateway
        self.kubelet: ProcessKubelet
        self.api: KubeApi
        self.call(self._start())

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.emulator = await self.stack.enter_async_context(TideEmulator())
        await self.stack.enter_async_context(kmock.Server(self.emulator))
        self.emulator.authorize(operator_grants("namespace"))
        self.gateway = await self.stack.enter_async_context(
            ApiGateway(
                str(self.emulator.url),
                tokens={GATEWAY_TOKEN},
                upstream_authorization=f"Bearer {OPERATOR_TOKEN}",
            )
        )
        self.api = KubeApi(Credentials(str(self.emulator.url)))
        self.kubelet = await self.stack.enter_async_context(
            ProcessKubelet(
                self.emulator, namespace=NS, deployment=DEPLOYMENT, start=self.start_worker
            )
        )

    def create_pool(self, body: dict[str, Any]) -> None:
        self.call(self.api.create(f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools", body))

    def start_operator(self) -> OperatorProcess:
        name = f"operator-{len(self.operators)}"
        operator = OperatorProcess(
            name, url=self.gateway.url, token=GATEWAY_TOKEN, folder=self.workdir, env=self.env
        )
        self.operators.append(operator)
        return operator

    # -- what the cluster shows ----------------------------------------------------------

    def replicas(self) -> int:
        """The Deployment's ``spec.replicas`` as the kubelet last saw it (0 before it)."""
        seen = self.kubelet.record.replicas
        return seen[-1][1] if seen else 0

    def pool_status(self) -> dict[str, Any]:
        try:
            found = self.emulator.objects[WORKERPOOLS, NS, POOL]
        except KeyError:
            return {}
        return dict(found.raw.get("status") or {})

    def condition(self, type_: str) -> str | None:
        for item in self.pool_status().get("conditions") or []:
            if item.get("type") == type_:
                return str(item.get("status"))
        return None

    def operator_writes(self, since: float = 0.0) -> int:
        """Requests the operator's token sent that reached the emulator since ``since``."""
        return sum(1 for entry in self.emulator.operator_requests() if entry.method != "GET")

    # -- faults --------------------------------------------------------------------------

    def api_down(self) -> None:
        self.call(self.gateway.refuse())

    def api_up(self) -> None:
        self.call(self.gateway.accept())

    def close(self) -> None:
        for operator in self.operators:
            operator.stop()

        async def shut() -> None:
            await self.api.aclose()
            await self.stack.aclose()

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(shut(), timeout=180)
        with contextlib.suppress(Exception):
            self.call(cancel_the_rest(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def worker_starter(env: dict[str, str], workdir: Path, *, concurrency: int) -> Callable[[str], Any]:
    """``start`` for the kubelet: a real worker of Tide's app named ``worker@<pod>``."""
    from tide_operator.resources.deployments import worker_hostname

    def start(pod: str) -> CeleryContainer:
        log = workdir / f"{pod}.log"
        process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tide", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "-Q", "io,default",
             "--hostname", worker_hostname(pod), "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--include", "faults_ledger"],
            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        return CeleryContainer(process=process, log=log)

    return start


def operator_env(env: dict[str, str], transport_options: dict[str, Any]) -> dict[str, str]:
    """The operator's environment as the chart sets it: the broker (busy probe, recovery)."""
    return {
        **env,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(transport_options),
        "PATH": os.environ.get("PATH", ""),
    }
