"""Running the stock app (``stockapp``) in tests: its broker corner, its workers, its producers.

Any test folder can use it (``tests/stockapp`` is on pytest's ``pythonpath``); the fixtures
in ``tests/stockapp/conftest.py`` wrap it. Isolation on brokers other runs share:

* Redis: a ``global_keyprefix`` of the run's own (``STOCKAPP_KEYPREFIX``), in DB 7, which
  the other suites leave alone; the prefix is deleted afterwards;
* RabbitMQ: a virtual host of the run's own, made through the management API and deleted
  afterwards, so the stock app keeps its fixed queue names (``orders``, ``emails``,
  ``reports``) as a real deployment would.

Workers are real ``celery -A stockapp worker`` processes; the in-process producer is a fresh
copy of the stock app's module loaded with the test's environment (``load_app``), so each
test's producer talks to its own corner while Celery's current app stays what it was.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

#: The folder that holds the ``stockapp`` package: put it on ``PYTHONPATH``.
STOCKAPP_PATH = Path(__file__).resolve().parent
QUEUES = ("orders", "emails", "reports")
CELERY = str(Path(sys.executable).with_name("celery"))
CONTROL_URL = os.environ.get("STOCKAPP_TEST_CONTROL_URL", "redis://127.0.0.1:6379/7")
REDIS_URL = os.environ.get("STOCKAPP_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
RABBITMQ_URL = os.environ.get("TIDE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
RABBITMQ_MANAGEMENT_URL = os.environ.get(
    "TIDE_TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
)
CONTROL_PREFIX = "stockapp-control:"


def control() -> redis.Redis:
    return redis.Redis.from_url(CONTROL_URL)


@dataclass
class StockBroker:
    """One test's corner of a shared broker for the stock app."""

    url: str
    run: str
    #: Redis ``global_keyprefix`` ('' on RabbitMQ, whose isolation is the vhost).
    keyprefix: str = ""
    management_url: str | None = None

    @property
    def is_redis(self) -> bool:
        return self.url.startswith(("redis://", "rediss://"))

    @property
    def transport_options(self) -> dict[str, Any]:
        """Exactly the stock app's: kombu's defaults plus the key prefix."""
        return {"global_keyprefix": self.keyprefix} if self.keyprefix else {}

    def client(self) -> redis.Redis:
        assert self.is_redis
        return redis.Redis.from_url(self.url)

    def env(self, *, acks_late: bool = False, integration: bool = True) -> dict[str, str]:
        """Environment of a stock app process (worker or producer) on this corner."""
        return {
            "STOCKAPP_BROKER_URL": self.url,
            "STOCKAPP_KEYPREFIX": self.keyprefix,
            "STOCKAPP_ACKS_LATE": "1" if acks_late else "0",
            "STOCKAPP_INTEGRATION": "1" if integration else "0",
            "STOCKAPP_CONTROL_URL": CONTROL_URL,
        }

    # -- the hold task's bookkeeping ---------------------------------------------------------

    def running(self) -> int:
        """How many ``hold``/``build_report`` tasks of this run execute now (their own record)."""
        return int(control().scard(f"{CONTROL_PREFIX}{self.run}:running"))

    def done(self) -> int:
        """How many held tasks of this run have finished."""
        return int(control().get(f"{CONTROL_PREFIX}{self.run}:done") or 0)

    def release(self, count: int) -> None:
        if count > 0:
            control().lpush(f"{CONTROL_PREFIX}{self.run}:release", *["go"] * count)

    def cleanup(self) -> None:
        client = control()
        for key in client.scan_iter(match=f"{CONTROL_PREFIX}{self.run}*", count=1000):
            client.delete(key)
        if self.is_redis and self.keyprefix:
            client = self.client()
            keys = list(client.scan_iter(match=_glob_escape(self.keyprefix) + "*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        elif self.management_url:
            delete_vhost(self.management_url, _vhost_of(self.url))


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _vhost_of(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if path.startswith("/") else "/"


def _management(url: str) -> httpx.Client:
    parsed = urllib.parse.urlsplit(url)
    base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 15672}"
    auth = (parsed.username or "guest", parsed.password or "guest")
    return httpx.Client(base_url=base, auth=auth, timeout=10)


def create_vhost(management_url: str, vhost: str) -> None:
    """A RabbitMQ virtual host that ``guest`` may use fully."""
    name = urllib.parse.quote(vhost, safe="")
    with _management(management_url) as client:
        client.put(f"/api/vhosts/{name}").raise_for_status()
        client.put(
            f"/api/permissions/{name}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()


def delete_vhost(management_url: str, vhost: str) -> None:
    with _management(management_url) as client:
        client.delete(f"/api/vhosts/{urllib.parse.quote(vhost, safe='')}")


def redis_broker(run: str | None = None) -> StockBroker:
    run = run or uuid.uuid4().hex[:10]
    return StockBroker(url=REDIS_URL, run=run, keyprefix=f"stockapp-test-{run}:")


def rabbitmq_broker(run: str | None = None) -> StockBroker:
    run = run or uuid.uuid4().hex[:10]
    vhost = f"stockapp-test-{run}"
    create_vhost(RABBITMQ_MANAGEMENT_URL, vhost)
    parsed = urllib.parse.urlsplit(RABBITMQ_URL)
    url = urllib.parse.urlunsplit(
        (parsed.scheme, parsed.netloc, "/" + urllib.parse.quote(vhost, safe=""), "", "")
    )
    return StockBroker(url=url, run=run, management_url=RABBITMQ_MANAGEMENT_URL)


#: Variables of Tide's own processes (``make test`` sets them for its RabbitMQ run) that
#: Celery would read in place of the stock app's configuration: Celery's
#: ``CELERY_BROKER_URL`` wins over ``broker_url``. A team's processes do not have them.
FOREIGN_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "CELERY_BROKER_KEYPREFIX",
    "DJANGO_SETTINGS_MODULE",
)


def stock_environment(broker: StockBroker, **values: str) -> dict[str, str]:
    """The environment of a stock app process: this one's, less Tide's, plus the app's."""
    environment = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    environment.update(values)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(STOCKAPP_PATH), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return environment


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_app(env: Mapping[str, str]) -> Any:
    """A fresh copy of ``stockapp.celery.app`` configured from ``env``, for producing.

    The stock module sets its app as Celery's current app, as any ``Celery()`` does; the
    caller's current app is put back, so a test process that also holds Tide's app keeps it.
    Celery reads ``CELERY_BROKER_URL`` from the environment before ``broker_url``; this copy's
    read and write URLs (read before that variable) are pinned to its own corner, so it
    publishes there even where the test process has Tide's broker in the environment.
    """
    import celery

    previous = celery.current_app._get_current_object()
    # The shared tasks register with every app, this copy included, once their module ran.
    importlib.import_module("stockapp.tasks")
    spec = importlib.util.spec_from_file_location(
        f"stockapp_celery_{uuid.uuid4().hex[:8]}", STOCKAPP_PATH / "stockapp" / "celery.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        with _environ(env):
            spec.loader.exec_module(module)
    finally:
        previous.set_current()
    app = module.app
    # Celery lets CELERY_BROKER_URL in the environment win over broker_url, and this test
    # process has Tide's (the default vhost on RabbitMQ runs): pin this copy's connections
    # to its own corner (broker_*_url settings are read before that variable).
    app.conf.broker_read_url = app.conf.broker_write_url = env["STOCKAPP_BROKER_URL"]
    return app


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    name: str
    broker: StockBroker

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:]


@dataclass
class Workers:
    """Real ``celery -A stockapp worker`` processes; ``stop_all`` ends them (warm shutdown)."""

    folder: Path
    started: list[Worker] = field(default_factory=list)

    def start(
        self,
        broker: StockBroker,
        *,
        queues: Sequence[str] = QUEUES,
        concurrency: int = 2,
        acks_late: bool = False,
        integration: bool = True,
        name: str | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Worker:
        # None: a unique name; "": no -n at all, Celery's (or the integration's) default.
        name = f"stock-{uuid.uuid4().hex[:8]}@%h" if name is None else name
        log = self.folder / f"stock-worker-{len(self.started)}.log"
        # Nothing of Tide's configuration may leak into the team's app.
        environment = stock_environment(
            broker,
            **broker.env(acks_late=acks_late, integration=integration),
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        argv = [
            CELERY, "-A", "stockapp", "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), *(["-n", name] if name else []),
            "--loglevel", "INFO", *extra,
        ]  # fmt: skip
        with log.open("wb") as out:
            # A session of its own, so a test can kill the worker with its pool processes
            # (``kill``) as a lost node would lose them.
            process = subprocess.Popen(
                argv,
                cwd=self.folder,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(process=process, log=log, name=name, broker=broker)
        self.started.append(worker)
        return worker

    def stop(self, worker: Worker, *, timeout: float = 30) -> int:
        """Warm shutdown (SIGTERM) and wait; kill if it outlives ``timeout``."""
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
        try:
            return worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            return worker.process.wait(10)

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker and its pool processes at once: a node lost without a word."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)

    def stop_all(self) -> None:
        # Held tasks end at once, so the warm shutdown is quick.
        for run in {worker.broker.run: worker.broker for worker in self.started}.values():
            run.release(10_000)
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for worker in self.started:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(10)


_PRODUCER = """
import json, sys
import stockapp.tasks
from stockapp.celery import app
for name, args, options in json.loads(sys.argv[1]):
    app.tasks[name].apply_async(args=args, **options)
app.close()
"""


def produce(
    broker: StockBroker,
    calls: Sequence[tuple[str, list[Any], Mapping[str, Any]]],
    *,
    integration: bool = True,
) -> None:
    """Publish from a process of the stock app alone, as the team's own producers do.

    ``calls``: (task name, args, ``apply_async`` options). Unlike ``load_app`` in the test
    process (where Tide's app may be loaded too), nothing but the stock app is imported.
    """
    environment = stock_environment(broker, **broker.env(integration=integration))
    subprocess.run(
        [sys.executable, "-c", _PRODUCER, json.dumps([list(call) for call in calls])],
        env=environment,
        check=True,
        capture_output=True,
        timeout=60,
    )


def connection(broker: StockBroker) -> Any:
    """A kombu connection to the broker corner with the stock app's transport options."""
    from kombu import Connection

    return Connection(broker.url, transport_options=broker.transport_options)


def inspect(broker: StockBroker, *, destination: Sequence[str] | None = None) -> Any:
    """Celery's remote ``inspect`` with the stock app's configuration, on its broker."""
    app = load_app(broker.env())
    return app.control.inspect(
        destination=list(destination) if destination else None,
        timeout=2.0,
        connection=connection(broker),
    )


def ping(broker: StockBroker, *, destination: Sequence[str] | None = None) -> set[str]:
    """Names of the workers that answer ``ping`` on the broker corner."""
    app = load_app(broker.env())
    with connection(broker) as conn:
        replies = app.control.ping(
            destination=list(destination) if destination else None,
            timeout=2.0,
            connection=conn,
        )
    return {name for reply in replies or [] for name in reply}
