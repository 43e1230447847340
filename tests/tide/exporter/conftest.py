"""Fixtures for the exporter's tests: real Redis, RabbitMQ, Celery workers and Prometheus.

Isolation on a machine whose brokers other test runs share: every test gets a unique run
id, Redis keys live under a unique ``global_keyprefix`` in DB 6 (not the default DB 0),
RabbitMQ queues carry the run id in their names, and teardown deletes all of it. Workers
are real ``celery worker`` subprocesses of ``exporter_testapp``; tests wait on observable
state (the ``hold`` task's running set, the exporter's figures) with a deadline, never on
a sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from kombu import Connection

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import exporter_testapp  # noqa: E402

from tide.exporter.config import ExporterConfig  # noqa: E402
from tide.exporter.server import RunningExporter, start_exporter  # noqa: E402

REDIS_HOST = os.environ.get("TIDE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TIDE_TEST_REDIS_PORT", "6379"))
#: A DB other suites leave alone; the key prefix isolates runs within it.
REDIS_DB = 6
RABBITMQ_URL = os.environ.get("TIDE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
RABBITMQ_MANAGEMENT_URL = os.environ.get(
    "TIDE_TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
)
CELERY = str(Path(sys.executable).with_name("celery"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisBroker:
    """One test's corner of the shared Redis: a DB and a key prefix."""

    run: str
    keyprefix: str
    db: int = REDIS_DB

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"

    @property
    def client(self) -> redis.Redis:
        return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.db)

    def running(self, run: str | None = None) -> int:
        """How many ``hold`` tasks of ``run`` are executing now (their own record)."""
        key = f"{exporter_testapp.CONTROL_PREFIX}{run or self.run}:running"
        return int(exporter_testapp.control().scard(key))

    def release(self, count: int, run: str | None = None) -> None:
        if count:
            key = f"{exporter_testapp.CONTROL_PREFIX}{run or self.run}:release"
            exporter_testapp.control().lpush(key, *["go"] * count)

    def make_app(self, **kwargs: Any) -> Any:
        kwargs.setdefault("broker_url", self.url)
        kwargs.setdefault("keyprefix", self.keyprefix)
        return exporter_testapp.make_app(**kwargs)

    def transport_options(self) -> dict[str, Any]:
        return dict(self.make_app().conf.broker_transport_options)


def _delete_prefixed(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_broker(run_id: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(run=run_id, keyprefix=f"tide-exporter-test-{run_id}:")
    try:
        broker.client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    yield broker
    _delete_prefixed(broker.client, broker.keyprefix)
    _delete_prefixed(exporter_testapp.control(), f"{exporter_testapp.CONTROL_PREFIX}{run_id}")


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    release: Callable[[int], None] = field(repr=False)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start ``celery worker`` subprocesses of ``exporter_testapp``; stop them after."""
    workers: list[Worker] = []

    def start(
        *,
        broker_url: str,
        queues: list[str],
        release: Callable[[int], None],
        keyprefix: str = "",
        concurrency: int = 1,
        prefetch: int = 1,
    ) -> Worker:
        log = tmp_path / f"worker-{len(workers)}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "EXPORTER_TEST_BROKER_URL": broker_url,
            "EXPORTER_TEST_KEYPREFIX": keyprefix,
            "EXPORTER_TEST_PREFETCH": str(prefetch),
        }
        argv = [
            CELERY, "-A", "exporter_testapp", "worker",
            "-Q", ",".join(queues),
            "-c", str(concurrency),
            "-n", f"exporter-test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "INFO",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        worker = Worker(process=process, log=log, release=release)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        # Let every held task finish so the warm shutdown is quick, then stop.
        worker.release(10_000)
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(10)


@pytest.fixture
def exporter_factory() -> Iterator[Callable[..., RunningExporter]]:
    """Start exporters on free loopback ports reading every 0.1 s; stop them after."""
    running: list[RunningExporter] = []

    def start(**config: Any) -> RunningExporter:
        config.setdefault("host", "127.0.0.1")
        config.setdefault("port", 0)
        config.setdefault("interval", 0.1)
        exporter = start_exporter(ExporterConfig(**config))
        running.append(exporter)
        return exporter

    yield start
    for exporter in running:
        exporter.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus")
    return path


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """Start a real Prometheus scraping ``targets`` (host:port) every second; stop it after."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: apt-get install -y prometheus")
    processes: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
                    "scrape_configs": [
                        {"job_name": "tide-exporter", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        log = (tmp_path / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return Prometheus(url=url)
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "Prometheus did not become ready: "
                    + (tmp_path / "prometheus.log").read_text()[-2000:]
                )
            time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def rabbitmq_management() -> str:
    """The management API's URL, enabling the plugin if it is off (start what is missing)."""

    def reachable() -> bool:
        try:
            return (
                httpx.get(f"{RABBITMQ_MANAGEMENT_URL}/api/overview", timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    if not reachable():
        plugins = shutil.which("rabbitmq-plugins")
        if plugins is None:
            pytest.fail("RabbitMQ management API unreachable and rabbitmq-plugins missing")
        subprocess.run([plugins, "enable", "rabbitmq_management"], check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while not reachable():
            if time.monotonic() > deadline:
                pytest.fail("RabbitMQ management API did not come up")
            time.sleep(0.5)
    return RABBITMQ_MANAGEMENT_URL


@dataclass
class RabbitBroker:
    """One test's queues on the shared RabbitMQ (vhost ``/``), deleted after the test."""

    run: str
    url: str
    management_url: str
    queues: list[str] = field(default_factory=list)

    def queue(self, stem: str) -> str:
        name = f"{stem}-{self.run}"
        self.queues.append(name)
        return name

    def make_app(self, **kwargs: Any) -> Any:
        kwargs.setdefault("broker_url", self.url)
        return exporter_testapp.make_app(**kwargs)

    def running(self) -> int:
        return int(
            exporter_testapp.control().scard(f"{exporter_testapp.CONTROL_PREFIX}{self.run}:running")
        )

    def release(self, count: int) -> None:
        if count:
            key = f"{exporter_testapp.CONTROL_PREFIX}{self.run}:release"
            exporter_testapp.control().lpush(key, *["go"] * count)


@pytest.fixture
def rabbit_broker(run_id: str, rabbitmq_management: str) -> Iterator[RabbitBroker]:
    broker = RabbitBroker(run=run_id, url=RABBITMQ_URL, management_url=rabbitmq_management)
    yield broker
    with Connection(RABBITMQ_URL) as connection:
        for name in broker.queues:
            channel = connection.channel()
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.close()
    _delete_prefixed(exporter_testapp.control(), f"{exporter_testapp.CONTROL_PREFIX}{run_id}")
