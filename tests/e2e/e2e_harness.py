"""The end-to-end suite's harness (``make e2e``): a real cluster, the chart, the operator.

The suite takes whatever cluster ``KUBECONFIG`` names (kind, minikube, a cloud cluster, or
a bare control plane with no kubelet) and builds one scenario on it, shared by the tests of
``test_e2e_cluster.py`` in file order:

* a fresh namespace that enforces the ``restricted`` Pod Security profile, the WorkerPool
  CRD applied server-side from ``charts/tide/files/crds`` (cluster-scoped, shared by runs),
  and the chart installed into the namespace with ``tests/e2e/values.yaml`` (operator scope
  ``namespace``);
* the operator as a local process, ``tide operator -n <namespace>``, logged in with a
  kubeconfig that carries a token of the chart's operator ServiceAccount (TokenRequest).
  So the chart's Role is what the operator's requests meet, and the kubeconfig login path
  is what it starts with. The chart's own operator Deployment is scaled to 0: one operator
  per namespace. (Running the image in the cluster would need the image in the cluster's
  registry and the metric sources reachable from pods; the local process needs neither.)
* real metric sources: a Redis keyspace of the run's own (the test settings' key prefix)
  filled by the reference Celery app's ``send_task``, a real ``tide exporter`` process
  reading it every 2 s, and a real Prometheus scraping that exporter every second for the
  Prometheus example pool;
* where the cluster has no node (a control plane without a kubelet), the stand-in kubelet
  (``standin_kubelet.py``) so pods become Running and Ready and deleted pods go away;
* the example pools of ``manifests/examples/`` adapted to the run: namespace, metric URLs,
  and the scale-to-zero pool's ``cooldownPeriod`` shortened from 300 s to 20 s.

Every check records a row (what was measured, the seconds, the bound, pass or fail) before
it asserts; at the end the table is printed and saved to ``bench/results/e2e.json``.
With ``TIDE_E2E_AUDIT_LOG`` pointing at the API server's audit log (JSON lines, Metadata
level), the RBAC and request-rate checks also read the server's own record.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results" / "e2e.json"
CRD = ROOT / "charts" / "tide" / "files" / "crds" / "workerpools.tide.dev.yaml"
EXAMPLES = ROOT / "manifests" / "examples"
GROUP, VERSION, PLURAL = "tide.dev", "v1alpha1", "workerpools"
RELEASE = "tide"
OPERATOR_SA = "tide-operator"
#: Seconds between the exporter's reads of the broker (``tide exporter --interval``).
EXPORTER_INTERVAL = 2.0
#: Seconds between Prometheus's scrapes of the exporter.
SCRAPE_INTERVAL = 1.0
#: The scale-to-zero example's cooldown, shortened so the suite does not wait 5 minutes.
BATCH_COOLDOWN = 20


def load_examples() -> list[dict[str, Any]]:
    """The example pools as shipped (manifests/examples/*.yaml)."""
    return [yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]


#: Every queue an example pool reads: the exporter exports them all from its start.
QUEUES = tuple(sorted({q for pool in load_examples() for q in pool["spec"]["queues"]}))

T = TypeVar("T")


# -- the table -------------------------------------------------------------------------------


@dataclass
class Row:
    check: str
    seconds: float | None
    bound: str
    ok: bool
    detail: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def record(
        self, check: str, *, ok: bool, seconds: float | None = None, bound: str = "", detail: str
    ) -> bool:
        self.rows.append(
            Row(check, None if seconds is None else round(seconds, 2), bound, ok, detail)
        )
        return ok

    def table(self) -> str:
        header = ("check", "seconds", "bound", "result", "detail")
        lines = [
            (
                r.check,
                "" if r.seconds is None else f"{r.seconds:.2f}",
                r.bound,
                "pass" if r.ok else "FAIL",
                r.detail,
            )
            for r in self.rows
        ]
        widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(4)]
        out = []
        for line in [header, *lines]:
            cells = [str(line[i]).ljust(widths[i]) for i in range(4)]
            out.append(" | ".join(cells) + " | " + str(line[4]))
        out.insert(1, "-+-".join("-" * w for w in widths) + "-+-------")
        return "\n".join(out)

    def save(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        document = {
            **self.facts,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "passed": sum(r.ok for r in self.rows),
            "failed": sum(not r.ok for r in self.rows),
            "checks": [r.__dict__ for r in self.rows],
        }
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")


REPORT = Report()


def print_report(terminalreporter: Any) -> None:
    """Print the table at the end of the run and save it (conftest's terminal summary)."""
    if not REPORT.rows:
        return
    terminalreporter.section("make e2e")
    for key, value in REPORT.facts.items():
        terminalreporter.write_line(f"{key}: {value}")
    terminalreporter.write_line(REPORT.table())
    REPORT.save()
    terminalreporter.write_line(f"saved {RESULTS.relative_to(ROOT)}")


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


def measure(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2
) -> tuple[T | None, float]:
    """Poll ``probe`` until it returns something truthy; return it and the seconds taken
    (``None`` and the timeout when it never did). The caller records the figure, then asserts."""
    start = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - start
        if value:
            return value, elapsed
        if elapsed > timeout:
            return None, elapsed
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    kubeconfig: Path
    api: client.ApiClient
    version: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def deployment(self, namespace: str, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def replicas(self, namespace: str, name: str) -> int | None:
        deployment = self.deployment(namespace, name)
        return None if deployment is None else deployment.spec.replicas


@pytest.fixture(scope="session")
def cluster(report: Report) -> Cluster:
    # The suite's own polling of the exporter and the operator is not worth a log line each.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.fail(
            "make e2e needs a cluster: set KUBECONFIG to its kubeconfig "
            "(kind, minikube, a cloud cluster, or a control plane of your own)"
        )
    api = config.new_client_from_config(config_file=path)
    info = client.VersionApi(api).get_code()
    report.facts.update(
        kubernetes=info.git_version,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    )
    return Cluster(kubeconfig=Path(path).resolve(), api=api, version=info.git_version)


@pytest.fixture(scope="session")
def workdir(report: Report) -> Path:
    """Logs and files of the run (operator, exporter, Prometheus, stand-in kubelet), kept
    under ``var/e2e/`` for a look after a failure."""
    path = ROOT / "var" / "e2e" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True)
    report.facts["logs"] = str(path.relative_to(ROOT))
    return path


def needs_standin_kubelet(cluster: Cluster) -> bool:
    """Whether to start the stand-in kubelet (``TIDE_E2E_STANDIN_KUBELET``: ``auto``
    (default: where no real node runs pods), ``yes`` or ``no``)."""
    mode = os.environ.get("TIDE_E2E_STANDIN_KUBELET", "auto")
    nodes = cluster.core.list_node().items
    real = [n for n in nodes if n.metadata.labels.get("tide.dev/standin-kubelet") != "true"]
    return mode == "yes" or (mode == "auto" and not real)


def start_standin_kubelet(cluster: Cluster, log: Path) -> subprocess.Popen[bytes]:
    """The stand-in kubelet, its Node Ready (its output to ``log``)."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "standin_kubelet.py"),
                "--kubeconfig",
                str(cluster.kubeconfig),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )

    def node_ready() -> bool:
        try:
            node = cluster.core.read_node("tide-e2e-standin")
        except ApiException:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    measure(node_ready, timeout=30)
    assert process.poll() is None, log.read_text()
    return process


@pytest.fixture(scope="session")
def standin_kubelet(cluster: Cluster, workdir: Path, report: Report) -> Iterator[bool]:
    """Start the stand-in kubelet where no real node runs pods (``needs_standin_kubelet``)."""
    start = needs_standin_kubelet(cluster)
    real = len(cluster.core.list_node(label_selector="tide.dev/standin-kubelet!=true").items)
    report.facts["nodes"] = (
        "stand-in kubelet (pods marked Running, no containers run)"
        if start
        else f"{real} real node(s)"
    )
    if not start:
        yield False
        return
    process = start_standin_kubelet(cluster, workdir / "standin-kubelet.log")
    yield True
    process.terminate()
    process.wait(timeout=10)


def create_namespace(cluster: Cluster, prefix: str = "tide-e2e") -> str:
    """A fresh namespace of the run that enforces the ``restricted`` Pod Security profile."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "tide.dev/e2e": "true",
                },
            }
        }
    )
    return name


def delete_namespace(cluster: Cluster, name: str, *, timeout: float = 120) -> None:
    """Delete the namespace and wait while it goes (the stand-in kubelet, torn down after
    this, still removes the pods)."""
    cluster.core.delete_namespace(name)

    def deleted() -> bool:
        try:
            cluster.core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    measure(deleted, timeout=timeout)


@pytest.fixture(scope="session")
def namespace(cluster: Cluster, standin_kubelet: bool) -> Iterator[str]:
    name = create_namespace(cluster)
    yield name
    if os.environ.get("TIDE_E2E_KEEP") != "1":
        delete_namespace(cluster, name)


# -- metric sources --------------------------------------------------------------------------


@dataclass
class Broker:
    """The run's Redis keyspace, written through the reference Celery app."""

    url: str
    keyprefix: str

    def publish(self, queue: str, count: int) -> None:
        from tide.celery import app

        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task("tide.samples.io_bound", args=[1.0], queue=queue, producer=producer)

    def purge(self, queue: str) -> None:
        from tide.celery import app

        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)

    def cleanup(self) -> None:
        import redis

        connection = redis.Redis.from_url(self.url)
        keys = list(connection.scan_iter(match=f"{self.keyprefix}*", count=500))
        if keys:
            connection.delete(*keys)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    from tide.celery import app

    url = app.conf.broker_url
    keyprefix = app.conf.broker_transport_options.get("global_keyprefix", "")
    assert keyprefix, "the test settings give every run its own broker key prefix"
    instance = Broker(url=url, keyprefix=keyprefix)
    yield instance
    instance.cleanup()


@dataclass
class Exporter:
    """A real ``tide exporter`` process on a loopback port; stop and start it for outages."""

    broker: Broker
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> None:
        env = {
            **os.environ,
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_BROKER_KEYPREFIX": self.broker.keyprefix,
        }
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "tide"),
                    "exporter",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--queues",
                    ",".join(QUEUES),
                    "--interval",
                    str(EXPORTER_INTERVAL),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def serving() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return "celery_queue_length" in httpx.get(self.url, timeout=1).text
            return False

        value, _ = measure(serving, timeout=60)
        assert value, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="session")
def exporter(broker: Broker, workdir: Path) -> Iterator[Exporter]:
    instance = Exporter(broker=broker, port=free_port(), log=workdir / "exporter.log")
    instance.start()
    yield instance
    instance.stop()


@dataclass
class Prometheus:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def prometheus(exporter: Exporter, workdir: Path) -> Iterator[Prometheus]:
    config_file = workdir / "prometheus.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": f"{SCRAPE_INTERVAL:g}s"},
                "scrape_configs": [
                    {
                        "job_name": "tide-exporter",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    instance = Prometheus(port=port)

    def has_series() -> bool:
        # Until it is ready Prometheus may answer with a plain-text 503.
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            answer = httpx.get(
                f"{instance.url}/api/v1/query", params={"query": "celery_queue_length"}, timeout=1
            ).json()
            return bool(answer["data"]["result"])
        return False

    value, _ = measure(has_series, timeout=60)
    if not value:
        process.terminate()
        process.wait(timeout=30)
        pytest.fail(
            "Prometheus never served the exporter's series:\n"
            + (workdir / "prometheus.log").read_text()[-3000:]
        )
    yield instance
    process.terminate()
    process.wait(timeout=30)
    log.close()


# -- the chart and the operator --------------------------------------------------------------


@dataclass
class Install:
    namespace: str
    seconds: float
    objects: list[str]
    how: str


def install_chart(cluster: Cluster, namespace: str) -> Install:
    """``helm install`` into the namespace. Where Helm refuses the server for the chart's
    ``kubeVersion`` floor, the chart rendered for that floor (``helm template
    --kube-version``) is applied server-side instead, and the install says so."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/workerpools.tide.dev"
    )
    chart_args = [
        RELEASE,
        str(ROOT / "charts" / "tide"),
        "--namespace",
        namespace,
        "--values",
        str(HERE / "values.yaml"),
        "--set",
        "operator.scope=namespace",
    ]
    helm = [str(BIN / "helm"), "--kubeconfig", str(cluster.kubeconfig)]
    start = time.monotonic()
    result = subprocess.run(
        [*helm, "install", *chart_args], capture_output=True, text=True, check=False
    )
    how = "helm install"
    if result.returncode == 0:
        listing = subprocess.run(
            [*helm, "get", "manifest", RELEASE, "--namespace", namespace],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    elif "requires kubeVersion" in result.stderr:
        floor = yaml.safe_load((ROOT / "charts" / "tide" / "Chart.yaml").read_text())["kubeVersion"]
        version = floor.lstrip(">=~^ ").split("-")[0]
        listing = subprocess.run(
            [*helm, "template", *chart_args, "--kube-version", version],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=listing)
        how = (
            f"helm install refused ({result.stderr.strip().removeprefix('Error: ')}); "
            f"helm template --kube-version {version} applied server-side"
        )
    else:
        raise AssertionError(result.stderr)
    seconds = time.monotonic() - start
    objects = [
        f"{doc['kind']}/{doc['metadata']['name']}" for doc in yaml.safe_load_all(listing) if doc
    ]
    return Install(namespace=namespace, seconds=seconds, objects=objects, how=how)


@pytest.fixture(scope="session")
def chart(cluster: Cluster, namespace: str) -> Install:
    return install_chart(cluster, namespace)


def token_kubeconfig(cluster: Cluster, *, namespace: str, path: Path) -> Path:
    """A kubeconfig for the chart's operator ServiceAccount: the cluster entry of
    ``KUBECONFIG`` (server, CA) and a token from the TokenRequest API."""
    document = yaml.safe_load(cluster.kubeconfig.read_text())
    context_name = document.get("current-context")
    context = next(c for c in document["contexts"] if c["name"] == context_name)["context"]
    entry = next(c for c in document["clusters"] if c["name"] == context["cluster"])["cluster"]
    entry = dict(entry)
    if "certificate-authority" in entry:
        ca = Path(entry.pop("certificate-authority"))
        if not ca.is_absolute():
            ca = cluster.kubeconfig.parent / ca
        entry["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    token = cluster.core.create_namespaced_service_account_token(
        OPERATOR_SA,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3 * 3600)
        ),
    ).status.token
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e2e", "cluster": entry}],
                "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": "e2e", "user": OPERATOR_SA, "namespace": namespace},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Operator:
    """``tide operator -n <namespace>`` as a local process with the operator's kubeconfig."""

    namespace: str
    kubeconfig: Path
    broker: Broker
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    liveness_port: int = 0
    started_at: float = 0.0
    starts: int = 0
    log: Path = Path()
    #: The replica's identity (``POD_ID``: the Lease's holderIdentity and the pools'
    #: ``status.actingReplica``); empty: the operator's default, the hostname.
    identity: str = ""

    def start(self) -> None:
        self.starts += 1
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"operator-{self.starts}.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # Idle-first scale-in asks the workers through the broker.
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_BROKER_KEYPREFIX": self.broker.keyprefix,
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.pop("POD_ID", None)
        if self.identity:
            env["POD_ID"] = self.identity
        self.started_at = time.monotonic()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "tide"),
                    "operator",
                    "-n",
                    self.namespace,
                    "--metrics-addr",
                    "127.0.0.1",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1).is_success
        return False

    def stop(self) -> float:
        """SIGTERM and wait; the seconds it took to exit."""
        assert self.process is not None
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        return time.monotonic() - start

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def exit_note(self, *, words: bool = True) -> str:
        """Why the operator is not running, in its own words (for a failing row)."""
        code = self.process.poll() if self.process is not None else None
        note = f"operator exited (code {code})"
        return f"{note}: {summarise_log(self.logs())}" if words else note

    def logs(self) -> str:
        return "\n".join(
            (self.workdir / f"operator-{n}.log").read_text() for n in range(1, self.starts + 1)
        )


def summarise_log(log: str) -> str:
    """The operator log's problems in a line: 403s by resource, other API errors by
    message, exception types with their message, each counted."""
    problems: Counter[str] = Counter()
    for line in log.splitlines():
        denied = re.search(r'cannot (\w+) resource "([\w./]+)"', line)
        if denied:
            problems[f"403 {denied.group(1)} {denied.group(2)}"] += 1
            continue
        refused = re.search(r"'message': '([^']+)', 'reason': '(\w+)', .*'code': (\d+)", line)
        if refused:
            problems[f"{refused.group(3)} {refused.group(2)}: {refused.group(1)}"] += 1
            continue
        if match := re.match(r"^(\w+(?:\.\w+)*(?:Error|Exception)): (.*)$", line):
            problems[f"{match.group(1)}: {match.group(2)[:120]}"] += 1
    return "; ".join(f"{what} (x{count})" for what, count in problems.most_common(6)) or "none"


@pytest.fixture(scope="session")
def operator(cluster: Cluster, chart: Install, broker: Broker, workdir: Path) -> Iterator[Operator]:
    # One operator per namespace: the local process replaces the chart's Deployment.
    cluster.apps.patch_namespaced_deployment_scale(
        OPERATOR_SA, chart.namespace, {"spec": {"replicas": 0}}
    )
    kubeconfig = token_kubeconfig(
        cluster, namespace=chart.namespace, path=workdir / "operator.kubeconfig"
    )
    instance = Operator(
        namespace=chart.namespace, kubeconfig=kubeconfig, broker=broker, workdir=workdir
    )
    yield instance
    # Pools go while the operator runs (it removes its finalizer); a pool the operator can
    # no longer release would hold the namespace's deletion forever, so its finalizer is
    # removed by hand, and the table says so.
    pools = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, chart.namespace, PLURAL)
    names = [p["metadata"]["name"] for p in pools["items"]]
    for name in names:
        cluster.custom.delete_namespaced_custom_object(
            GROUP, VERSION, chart.namespace, PLURAL, name
        )
    gone, seconds = measure(
        lambda: (
            not cluster.custom.list_namespaced_custom_object(
                GROUP, VERSION, chart.namespace, PLURAL
            )["items"]
        ),
        timeout=30,
    )
    stuck = (
        []
        if gone
        else [
            p["metadata"]["name"]
            for p in cluster.custom.list_namespaced_custom_object(
                GROUP, VERSION, chart.namespace, PLURAL
            )["items"]
        ]
    )
    for name in stuck:
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, chart.namespace, PLURAL, name, {"metadata": {"finalizers": None}}
        )
    REPORT.record(
        "clean-up: remaining pools deleted",
        ok=not stuck,
        seconds=seconds,
        bound="30",
        detail=f"{len(names)} pools deleted"
        + (
            f"; {stuck} kept the finalizer (operator not running), removed by hand" if stuck else ""
        ),
    )
    if instance.alive():
        instance.stop()


# -- the example pools -----------------------------------------------------------------------


def example_pools(
    *, namespace: str, exporter_url: str, prometheus_url: str
) -> list[dict[str, Any]]:
    """manifests/examples/*.yaml adapted to the run: namespace and metric URLs, and the
    scale-to-zero pool's cooldown (300 s) shortened."""
    pools = load_examples()
    for pool in pools:
        pool["metadata"]["namespace"] = namespace
        metrics = pool["spec"]["metrics"]
        if "exporter" in metrics:
            metrics["exporter"]["url"] = exporter_url
        if "prometheus" in metrics:
            metrics["prometheus"]["url"] = prometheus_url
        if pool["spec"].get("cooldownPeriod", 0) > BATCH_COOLDOWN:
            pool["spec"]["cooldownPeriod"] = BATCH_COOLDOWN
    return pools


#: The Deployment the adopted example (``reports``) scales: the user's own, restricted-ready.
def adopted_deployment(namespace: str) -> dict[str, Any]:
    labels = {"app": "reports-worker", "team": "finance"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "reports-worker",
            "namespace": namespace,
            "labels": labels,
            "annotations": {"owner": "finance-team"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "reports-worker"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "worker",
                            "image": "ghcr.io/example/tide:0.1.0",
                            "args": ["worker", "-Q", "reports", "-c", "2", "-n", "worker@%h"],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }
