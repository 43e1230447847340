"""Chaos bench: faults injected into a real platform mid-burst, and what became of every job.

Each scenario runs on real parts: a private ``redis-server`` (append-only file on, so a
restart is a persistent broker's) or a private RabbitMQ vhost, real ``celery worker``
processes of Tide's reference app (prefork, Tide's shipped settings: late acks, reject on
worker lost, prefetch 1), a fresh PostgreSQL database, jobs submitted through
``tide.jobs.services`` as the API does. A burst of ``io_bound`` jobs is submitted, the fault
is injected while they run, then the bench waits for every job to end (or a deadline) and
reads the job rows and the ledger the workers keep (``faults_ledger``: one line per
completed execution). Per scenario:

* submitted, succeeded, failed as designed (a ``fail`` job among them fails on purpose),
  revoked (nobody revokes in these runs, so any is a casualty), lost (not final at the
  deadline: stranded or gone);
* run twice: jobs whose task ran to completion more than once (the target is 0);
  restarted: jobs started more than once because their first run was cut (a worker killed,
  a connection lost); they ran to completion once;
* recover: seconds from the fault to the last job's end.

The operator's faults (``prometheus-outage``, ``operator-restart``, ``api-unreachable``) run
on ``faults_cluster``: ``tide operator`` as a process, the API emulator of the operator tests
(held to a real kube-apiserver's OpenAPI document and the chart's RBAC) behind a gateway
that can close its port, a process kubelet that runs the worker Deployment's pods as real
workers named ``worker@<pod>``, the real exporter, and for the first a real Prometheus. A
pool of 1 to 4 workers (one more per 10 s at most) takes a burst of 300 jobs, so each fault
lands mid-scale-up. Their *recover* is the operator's: from the fault's end until it read
metrics again (Prometheus), scaled again (a new operator), or was heard again (the API
server); the details (sizes seen, pods deleted while busy, conditions) go to the JSON.

Prints the table and writes ``bench/results/faults.json``; docs/faults.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
RESULTS = BENCH / "results"
DB = os.environ.get("BENCH_FAULTS_DB", "tide_bench_faults")
REDIS_PORT = int(os.environ.get("BENCH_FAULTS_REDIS_PORT", "18301"))
RABBIT_VHOST = os.environ.get("BENCH_FAULTS_VHOST", "tide_bench_faults")
BURST = 120
TASK_SECONDS = 2.0
WORKERS = 2
CONCURRENCY = 4
DEADLINE = 180.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Real parts --------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of our own with the append-only file on (fsync every second)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.dir = workdir / f"redis-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", ""],
            stdout=(self.dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait(self._answers, 10, "redis-server to answer")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self, *, crash: bool = False) -> None:
        """Stop: SIGTERM (Redis flushes its AOF and exits), or SIGKILL for a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            self.process.wait(timeout=20)


class RabbitVhost:
    """A private vhost on the shared RabbitMQ (guest/guest), deleted and made afresh."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def start(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], check=False,
                       capture_output=True)  # fmt: skip
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
            check=True,
        )

    def restart_broker(self, down: float) -> None:
        """Stop and start the RabbitMQ application (the node stays up: durable queues are
        reloaded from disk as after a restart)."""
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True)
        time.sleep(down)
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], check=False,
                       capture_output=True)  # fmt: skip


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True, check=False)  # fmt: skip
        return [int(pid) for pid in out.stdout.split()]


@dataclass
class Platform:
    """Workers of Tide's app on one broker and one database, and the bench's own view."""

    broker_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    #: Other processes to stop at the end (``tide up``), SIGTERM first.
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The operator scenarios' cluster (``faults_cluster.Cluster``), closed first; their
    #: Prometheus, timeline, and the moments of the faults.
    cluster: Any = None
    prometheus: Any = None
    timeline: Any = None
    marks: dict[str, Any] = field(default_factory=dict)

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.txt"

    def start_worker(self) -> Worker:
        name = f"faults-{uuid.uuid4().hex[:6]}@localhost"
        process = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tide", "worker", "--pool", "prefork",
             "--concurrency", str(CONCURRENCY), "-Q", "io,default", "--hostname", name,
             "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--include", "faults_ledger"],
            env=self.env,
            stdout=(self.workdir / f"{name.split('@')[0]}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = Worker(name=name, process=process)
        self.workers.append(worker)
        return worker

    def stop_workers(self, *, grace: float = 60) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.prometheus is not None:
            self.prometheus.stop()
        for process in self.extra:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.extra:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    def completions(self) -> Counter[str]:
        if not self.ledger.exists():
            return Counter()
        lines = self.ledger.read_text().splitlines()
        return Counter(line.split()[1] for line in lines if line.startswith("done "))

    def busy_at(self, worker: str, moment: float) -> int:
        """Tasks ``worker`` had started and not completed at ``moment`` (from the ledger)."""
        if not self.ledger.exists():
            return 0
        started: set[str] = set()
        ended: set[str] = set()
        for line in self.ledger.read_text().splitlines():
            kind, task_id, host, at = line.split()
            if host != worker or float(at) > moment or kind == "done":
                continue
            (started if kind == "start" else ended).add(task_id)
        return len(started - ended)


def _wait(check: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def platform(broker: str, workdir: Path) -> Iterator[tuple[Platform, Any]]:
    """A fresh database, the broker, Django set up in this process; workers started."""
    from scratch_databases import recreate

    db_url = recreate(DB)
    if broker == "redis":
        server: Any = PrivateRedis(REDIS_PORT, workdir)
    else:
        server = RabbitVhost(RABBIT_VHOST)
    server.start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.local",
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": server.url,
        "CELERY_RESULT_BACKEND": "",
        "TIDE_FAULTS_LEDGER": str(workdir / "ledger.txt"),
        "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        # One keyspace for the bench's processes and `tide up`'s (told, so it keeps it).
        "CELERY_BROKER_KEYPREFIX": "faults:" if broker == "redis" else "",
    }
    shared = (
        "CELERY_BROKER_KEYPREFIX",
        "DJANGO_SETTINGS_MODULE",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
    )
    os.environ.update({k: env[k] for k in shared})
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    plat = Platform(broker_url=server.url, workdir=workdir, env=env)
    try:
        yield plat, server
    finally:
        plat.stop_workers(grace=30)
        server.stop()


# --- Jobs ---------------------------------------------------------------------------------


def submit(count: int, *, seconds: float = TASK_SECONDS, failing: int = 0) -> list[str]:
    """Submit ``count`` io_bound jobs and ``failing`` jobs that fail on purpose."""
    from tide.jobs import services

    ids: list[str] = []
    for index in range(count + failing):
        step = (
            services.Step(task="tide.samples.io_bound", kwargs={"seconds": seconds})
            if index < count
            else services.Step(task="tide.samples.fail")
        )
        for attempt in range(100):
            try:
                job = services.submit_task(step=step, options=services.Options())
                ids.append(str(job.id))
                break
            except services.BrokerUnavailable:
                # The API answers 503 here; a client retries. Not a job yet: not counted.
                time.sleep(0.2 * min(attempt + 1, 5))
    return ids


def settle(ids: list[str], *, deadline: float) -> float:
    """Wait until every job is final (or the deadline); returns the monotonic end."""
    from tide.jobs.models import FINAL_STATES, Job

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        open_ = Job.objects.filter(id__in=ids).exclude(state__in=FINAL_STATES).count()
        if not open_:
            return time.monotonic()
        time.sleep(0.5)
    return time.monotonic()


@dataclass
class Outcome:
    scenario: str
    broker: str
    submitted: int
    succeeded: int
    failed_as_designed: int
    failed_otherwise: int
    revoked: int
    lost: int
    run_twice: int
    restarted: int
    recover_seconds: float | None
    note: str = ""
    #: What the operator did (the operator scenarios): sizes, conditions, timings.
    details: dict[str, Any] = field(default_factory=dict)


def tally(
    scenario: str, broker: str, plat: Platform, ids: list[str], *, failing: set[str],
    faults: list[tuple[float, set[str]]], note: str = "",
) -> Outcome:  # fmt: skip
    """Count what became of every job; ``faults`` are (wall time, jobs running then)."""
    from tide.jobs.models import Job, JobState

    rows = {str(j.id): j for j in Job.objects.filter(id__in=ids)}
    done = plat.completions()
    states = Counter(rows[i].state if i in rows else "missing" for i in ids)
    failed_designed = sum(
        1 for i in ids if i in failing and i in rows and rows[i].state == JobState.FAILED
    )
    revoked = [rows[i] for i in ids if i in rows and rows[i].state == JobState.REVOKED]
    if revoked:
        log(f"revoked: {Counter(j.error for j in revoked)}")
    lost = sum(1 for i in ids if i not in rows or not rows[i].is_final)
    # Recovery: from the last fault until every job running at any fault had ended.
    affected = set().union(*(running for _, running in faults)) if faults else set()
    ends = [rows[i].finished_at for i in affected if i in rows and rows[i].finished_at]
    recover = None
    if faults and not lost:
        last = max(at for at, _ in faults)
        recover = round(max([e.timestamp() for e in ends], default=last) - last, 1)
    return Outcome(
        scenario=scenario,
        broker=broker,
        submitted=len(ids),
        succeeded=states[JobState.SUCCEEDED],
        failed_as_designed=failed_designed,
        failed_otherwise=states[JobState.FAILED] - failed_designed,
        revoked=states[JobState.REVOKED],
        lost=lost,
        run_twice=sum(1 for i in ids if done[i] > 1),
        restarted=sum(1 for i in ids if i in rows and rows[i].attempts > 1),
        recover_seconds=recover,
        note=note,
    )


# --- Scenarios ------------------------------------------------------------------------------


def burst(size: int = BURST) -> tuple[list[str], set[str]]:
    """``size`` io_bound jobs, and one job in forty that fails on purpose."""
    ids = submit(size, failing=0)
    failing = set(submit(0, failing=size // 40))
    return ids + sorted(failing), failing


def running_now() -> set[str]:
    from tide.jobs.models import Job, JobState

    states = (JobState.STARTED, JobState.PROGRESS)
    return {str(i) for i in Job.objects.filter(state__in=states).values_list("id", flat=True)}


def wait_running(count: int, timeout: float = 30) -> set[str]:
    def enough() -> set[str] | None:
        running = running_now()
        return running if len(running) >= count else None

    try:
        return set(_wait(enough, timeout, f"{count} jobs running"))
    except TimeoutError:
        return set()  # the burst is (nearly) over: no more faults to inject


def start_workers(plat: Platform) -> None:
    for _ in range(WORKERS):
        plat.start_worker()


def broker_restart(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    running = wait_running(WORKERS * CONCURRENCY, timeout=120)
    log(f"{broker}: restarting the broker with {len(running)} jobs running")
    at = time.time()
    if broker == "redis":
        server.stop()
        time.sleep(BROKER_DOWN)
        server.start()
    else:
        server.restart_broker(BROKER_DOWN)
    return [(at, running)]


def kill_children(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """SIGKILL a random pool process (one running a task) of a random worker, 5 times."""
    rng = random.Random(7)
    faults = []
    for _ in range(5):
        if not (running := wait_running(WORKERS)):
            break
        worker = rng.choice([w for w in plat.workers if w.process.poll() is None])
        if pids := worker.pool_pids():
            os.kill(rng.choice(pids), signal.SIGKILL)
            faults.append((time.time(), running))
        time.sleep(2)
    return faults


def _recover_in_background(plat: Platform, node: str) -> threading.Thread:
    """Hand a dead worker to dead-worker recovery, as the operator (its pod deleted) or
    local mode (its process reaped) does: it waits for the lease to lapse, then puts back
    what the worker held (Redis; on RabbitMQ the broker requeued it already)."""
    from django.conf import settings

    from tide_celery.recovery import recover, recover_when_lapsed

    options = dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)

    def run() -> None:
        result = asyncio.run(
            recover_when_lapsed(lambda: recover(plat.broker_url, node, transport_options=options))
        )
        if result is not None:
            log(f"recovery: {result.describe()}")

    thread = threading.Thread(target=run, name=f"recover {node}", daemon=True)
    thread.start()
    return thread


def kill_workers(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """SIGKILL a whole worker (main process and pool), as a lost node does; a new worker
    takes its place, as a Deployment's would, and the dead one is handed to dead-worker
    recovery, as the operator or local mode hands it. Twice."""
    faults = []
    for index in range(2):
        if not (running := wait_running(WORKERS * CONCURRENCY // 2)):
            break
        victim = plat.workers[index]
        pids = victim.pool_pids()
        victim.process.send_signal(signal.SIGKILL)
        for pid in pids:  # the whole pod goes: its pool processes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        faults.append((time.time(), running))
        _recover_in_background(plat, victim.name)
        plat.start_worker()
        time.sleep(5)
    return faults


def scale_in(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """Scale-in during load, repeatedly: SIGTERM (warm shutdown) the oldest worker and
    start a new one, every 4 s, six times, as an autoscaler flapping at its worst would."""
    faults = []
    told: set[str] = set()
    for _ in range(6):
        if not (running := wait_running(WORKERS)):
            break
        victim = next(w for w in plat.workers if w.name not in told)
        victim.process.send_signal(signal.SIGTERM)
        told.add(victim.name)
        faults.append((time.time(), running))
        plat.start_worker()
        time.sleep(4)
    return faults


EXPORTER_PORT = int(os.environ.get("BENCH_FAULTS_EXPORTER_PORT", "18320"))
LOCAL_POOL = """\
apiVersion: tide.dev/v1alpha1
kind: WorkerPool
metadata: {name: faults}
spec:
  queues: [io, default]
  concurrency: 4
  minReplicas: 1
  maxReplicas: 2
  pollingInterval: 2
  template: {image: tide, extraArgs: ["--include", "faults_ledger"]}
"""


def local_exporter_outage(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """Local mode: `tide up` drives the workers; its exporter is SIGKILLed twice, 8 s
    apart, mid-burst. `tide up` must restart it and go on; the autoscaler holds meanwhile."""
    (plat.workdir / "pools.yaml").write_text(LOCAL_POOL)
    up = subprocess.Popen(
        [str(BIN / "tide"), "up", "--no-ui", "--no-api", "--no-beat", "--no-flower",
         "--pools", str(plat.workdir / "pools.yaml"), "--exporter-port", str(EXPORTER_PORT),
         "--var", str(plat.workdir / "var")],
        env=plat.env, stdout=(plat.workdir / "up.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    plat.extra.append(up)
    faults = []
    for attempt in range(2):
        # `tide up` starts its first worker slowly on a busy machine: wait longer for it.
        if not (running := wait_running(CONCURRENCY, timeout=180 if attempt == 0 else 30)):
            break
        out = subprocess.run(["pgrep", "-f", f"exporter .*--port {EXPORTER_PORT}"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        for pid in out.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        faults.append((time.time(), running))
        time.sleep(8)
    if up.poll() is not None:
        raise RuntimeError(f"tide up stopped after its exporter was killed: {up.returncode}")
    return faults


# --- The operator's faults (the operator, the API emulator, a process kubelet) ---------------
#
# Nothing runs pods here: ``faults_cluster`` puts the operator (a ``tide operator`` process),
# the API emulator of the operator tests and a process kubelet (the worker Deployment's pods
# as real workers of Tide's app) together. The pool starts at 1 worker and may add one per
# 10 s up to 4, so each fault lands while the pool is scaling up under the burst.

OPERATOR_BURST = 300
OUTAGE = 30.0
#: Prometheus is away longer: the pool acts on its last reading for up to 30 s (the
#: default staleAfterSeconds), then counts failed reads and falls back.
PROMETHEUS_OUTAGE = 60.0
PROMETHEUS_PORT = int(os.environ.get("BENCH_FAULTS_PROMETHEUS_PORT", "18330"))
CLUSTER_EXPORTER_PORT = int(os.environ.get("BENCH_FAULTS_CLUSTER_EXPORTER_PORT", "18321"))


@dataclass
class Sample:
    """The cluster as the bench saw it at one moment (every 0.5 s)."""

    at: float
    replicas: int
    ready: int
    fallback: str | None
    metrics_available: str | None
    ready_condition: str | None
    operator_requests: int


class Timeline:
    """Samples the cluster in a thread of its own while a scenario runs."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            cluster = self.cluster
            pods = list(cluster.kubelet.pods.values())
            self.samples.append(Sample(
                at=time.time(),
                replicas=cluster.replicas(),
                ready=sum(1 for p in pods if p.ready_since and p.deleting_since is None),
                fallback=cluster.condition("Fallback"),
                metrics_available=cluster.condition("MetricsAvailable"),
                ready_condition=cluster.condition("Ready"),
                operator_requests=len(cluster.emulator.operator_requests()),
            ))  # fmt: skip
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def first_after(self, moment: float, check: Callable[[Sample], bool]) -> float | None:
        for sample in self.samples:
            if sample.at >= moment and check(sample):
                return round(sample.at - moment, 1)
        return None

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def operator_setup(plat: Platform, *, prometheus: bool = False, **spec: Any) -> None:
    """The exporter (and Prometheus), the cluster, the pool and one operator; returns once
    the pool's first worker is ready."""
    from django.conf import settings

    from faults_cluster import (
        Cluster,
        Exporter,
        Prometheus,
        operator_env,
        pool_body,
        worker_starter,
    )

    exporter = Exporter(plat.env, plat.workdir, port=CLUSTER_EXPORTER_PORT)
    plat.extra.append(exporter.process)
    metrics: dict[str, Any] = {"exporter": {"url": exporter.url}}
    if prometheus:
        prom = Prometheus(plat.workdir, port=PROMETHEUS_PORT, target=f"127.0.0.1:{exporter.port}")
        plat.prometheus = prom
        _wait(prom.has_series, 60, "Prometheus to hold the exporter's series")
        metrics = {"prometheus": {"url": prom.url}}
    options = dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)
    cluster = Cluster(
        env=operator_env(plat.env, options),
        workdir=plat.workdir,
        start_worker=worker_starter(plat.env, plat.workdir, concurrency=CONCURRENCY),
    )
    plat.cluster = cluster
    cluster.create_pool(pool_body(metrics, **spec))
    cluster.start_operator()
    try:
        _wait(lambda: any(p.ready_since for p in cluster.kubelet.pods.values()), 180,
              "the pool's first worker ready")  # fmt: skip
    except TimeoutError:
        log(f"pool status: {json.dumps(cluster.pool_status())}")
        raise
    plat.timeline = Timeline(cluster)


def _mid_scale(plat: Platform, size: int, timeout: float = 120) -> None:
    _wait(lambda: plat.cluster.replicas() >= size, timeout, f"the pool at {size} workers")


def prometheus_outage(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """Prometheus stopped for OUTAGE seconds while the pool scales up, then started again."""
    _mid_scale(plat, 3)
    running = running_now()
    at = time.time()
    log(f"stopping Prometheus with {len(running)} jobs running, pool at {plat.cluster.replicas()}")
    plat.prometheus.stop()
    time.sleep(PROMETHEUS_OUTAGE)
    back = time.time()
    plat.prometheus.start()
    plat.marks.update(fault=at, back=back)
    log(f"Prometheus back after {back - at:.1f} s")
    return [(at, running)]


def operator_restart(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """The operator SIGKILLed mid-scale-up (pool at 2 of 4), a new one started 2 s later;
    then that one stopped with SIGTERM (pool at 3) and a third started."""
    faults = []
    for size, sig in ((2, signal.SIGKILL), (3, signal.SIGTERM)):
        _mid_scale(plat, size)
        running = running_now()
        at = time.time()
        before = plat.cluster.replicas()
        plat.cluster.operators[-1].kill(sig)
        log(f"operator {signal.Signals(sig).name} at {before} workers, {len(running)} running")
        time.sleep(2)  # a Deployment's replacement pod takes that much at least
        started = plat.cluster.start_operator().started
        faults.append((at, running))
        plat.marks.setdefault("restarts", []).append(
            {"signal": signal.Signals(sig).name, "at": at, "started": started, "size": before}
        )
    return faults


def api_unreachable(plat: Platform, server: Any, broker: str) -> list[tuple[float, set[str]]]:
    """The operator's API server unreachable for OUTAGE seconds mid-scale (its port closed,
    every open connection dropped), then back on the same port."""
    _mid_scale(plat, 2)
    running = running_now()
    at = time.time()
    log(f"API server unreachable with {len(running)} running, pool at {plat.cluster.replicas()}")
    plat.cluster.api_down()
    time.sleep(OUTAGE)
    back = time.time()
    plat.cluster.api_up()
    plat.marks.update(fault=at, back=back)
    return [(at, running)]


def operator_details(plat: Platform, name: str) -> dict[str, Any]:
    """What the operator did, from the timeline and the kubelet's record (not its logs)."""
    from tide_operator.resources.deployments import worker_hostname

    cluster, timeline = plat.cluster, plat.timeline
    # The burst is over: wait for the pool to scale in (idle workers only), then look.
    with contextlib.suppress(TimeoutError):
        _wait(lambda: cluster.replicas() == 1 and len(cluster.kubelet.pods) == 1, 120,
              "the pool back to 1 worker")  # fmt: skip
    timeline.stop()
    record = cluster.kubelet.record
    deleted_busy = {pod: plat.busy_at(worker_hostname(pod), at) for at, pod in record.deleted}
    sizes = [n for _, n in record.replicas]
    details: dict[str, Any] = {
        "replicas_seen": sizes,
        "scale_downs": record.shrank(),
        "pods_created": len(record.created),
        "pods_deleted": len(record.deleted),
        "pods_deleted_busy": sum(1 for n in deleted_busy.values() if n),
        "tasks_on_deleted_pods": sum(deleted_busy.values()),
        "container_restarts": len(record.restarts),
        "violations": list(cluster.emulator.violations),
        "forbidden": list(cluster.emulator.forbidden),
    }
    marks = plat.marks
    if name in ("prometheus-outage", "api-unreachable"):
        fault, back = marks["fault"], marks["back"]
        during = timeline.between(fault, back)
        details["replicas_during_outage"] = sorted({s.replicas for s in during})
        details["fallback_during_outage"] = any(s.fallback == "True" for s in during)
        details["metrics_unavailable_after_s"] = timeline.first_after(
            fault, lambda s: s.metrics_available == "False"
        )
        details["metrics_available_after_back_s"] = timeline.first_after(
            back, lambda s: s.metrics_available == "True"
        )
        details["fallback_after_s"] = timeline.first_after(fault, lambda s: s.fallback == "True")
        details["metrics_healthy_after_back_s"] = timeline.first_after(
            back, lambda s: s.fallback != "True"
        )
        size_at_back = next((s.replicas for s in reversed(timeline.samples) if s.at <= back), 0)
        details["scaled_after_back_s"] = timeline.first_after(
            back, lambda s: s.replicas != size_at_back
        )
        requests_at_back = next(
            (s.operator_requests for s in reversed(timeline.samples) if s.at <= back), 0
        )
        details["operator_requests_during_outage"] = requests_at_back - next(
            (s.operator_requests for s in timeline.samples if s.at >= fault), 0
        )
        details["first_request_after_back_s"] = timeline.first_after(
            back, lambda s: s.operator_requests > requests_at_back
        )
    if name == "operator-restart":
        restarts = []
        for item in marks["restarts"]:
            size = item["size"]
            restarts.append({
                **item,
                "scaled_after_start_s": timeline.first_after(
                    item["started"], lambda s, size=size: s.replicas > size
                ),
                "smallest_after": min(
                    (s.replicas for s in timeline.samples if s.at >= item["at"]
                     and s.at <= item["started"] + 20), default=None),
            })  # fmt: skip
        details["restarts"] = restarts
    return details


OPERATOR_FAULTS = {
    "prometheus-outage": {
        "prometheus": True,
        # Metrics unreadable for more than 2 reads in a row: run 1 worker, but never
        # fewer than held running tasks at the last good read (Tide's rule over KEDA's).
        "fallback": {"failureThreshold": 2, "replicas": 1},
    },
    "operator-restart": {},
    "api-unreachable": {},
}


FAULTS: dict[str, tuple[str, Callable[[Platform, Any, str], list[tuple[float, set[str]]]]]] = {
    "broker-restart": ("broker restart mid-burst (persistent broker, 3 s down)", broker_restart),
    "kill-children": ("SIGKILL of a random pool process running a task, 5 times", kill_children),
    "kill-workers": (
        "SIGKILL of a whole worker (main and pool), replaced and recovered, twice",
        kill_workers,
    ),
    "scale-in": ("scale-in during load: warm shutdown of a worker, 6 times in 24 s", scale_in),
    "exporter-outage": (
        "local mode: exporter SIGKILLed twice mid-burst (tide up restarts it)",
        local_exporter_outage,
    ),
    "prometheus-outage": (
        "operator: Prometheus down 60 s mid-scale-up (pool on Prometheus metrics)",
        prometheus_outage,
    ),
    "operator-restart": (
        "operator: SIGKILL mid-scale-up, then SIGTERM, each replaced",
        operator_restart,
    ),
    "api-unreachable": (
        "operator: API server unreachable 30 s mid-scale-up (emulated)",
        api_unreachable,
    ),
}
#: Scenarios whose workers `tide up` or the process kubelet starts, not the bench.
SELF_MANAGED = {"exporter-outage", *OPERATOR_FAULTS}
#: Scenarios on Redis only (local mode; the operator's, whose faults are not the broker's).
REDIS_ONLY = {"exporter-outage", *OPERATOR_FAULTS}
BROKER_DOWN = 3.0


def run_one(name: str, broker: str, workdir: Path) -> Outcome:
    title, inject = FAULTS[name]
    load_before = os.getloadavg()
    with platform(broker, workdir) as (plat, server):
        if name in OPERATOR_FAULTS:
            operator_setup(plat, **OPERATOR_FAULTS[name])
        elif name not in SELF_MANAGED:
            start_workers(plat)
        ids, failing = burst(OPERATOR_BURST if name in OPERATOR_FAULTS else BURST)
        # Workers start slowly on a busy machine: the faults begin once work runs.
        wait_running(1, timeout=300)
        faults = inject(plat, server, broker)
        settle(ids, deadline=DEADLINE)
        outcome = tally(title, broker, plat, ids, failing=failing, faults=faults)
        if name in OPERATOR_FAULTS:
            outcome.details = operator_details(plat, name)
            outcome.details["jobs_recover_s"] = outcome.recover_seconds
            outcome.recover_seconds = _operator_recover(name, outcome.details)
        # The machine's load average (1, 5, 15 min) before and after: the run's conditions.
        outcome.details["load_before"] = [round(x, 2) for x in load_before]
        outcome.details["load_after"] = [round(x, 2) for x in os.getloadavg()]
        outcome.details["run_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return outcome


def _operator_recover(name: str, details: dict[str, Any]) -> float | None:
    """The operator scenarios' *recover*: from the fault's end until the operator acted
    again (scaled the pool, or for the API server its first request admitted)."""
    if name == "operator-restart":
        times = [r["scaled_after_start_s"] for r in details["restarts"]]
        return None if None in times else max(times)
    if name == "prometheus-outage":
        return details.get("metrics_available_after_back_s")
    return details.get("first_request_after_back_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(FAULTS))
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--one", nargs=3, metavar=("SCENARIO", "BROKER", "OUT"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "app"))
    if args.one:
        # One scenario on one broker, in a process of its own (Django and Celery are
        # configured once per process: each run gets its broker and database afresh).
        name, broker, out = args.one
        workdir = Path(tempfile.mkdtemp(prefix=f"tide-faults-{name}-{broker}-"))
        outcome = run_one(name, broker, workdir)
        Path(out).write_text(json.dumps(asdict(outcome)))
        return
    outcomes: list[Outcome] = []
    for name in args.scenarios:
        for broker in args.brokers.split(","):
            if name in REDIS_ONLY and broker != "redis":
                continue
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            log(f"scenario {name} on {broker}")
            subprocess.run([sys.executable, __file__, "--one", name, broker, str(out)],
                           check=True)  # fmt: skip
            outcomes.append(Outcome(**json.loads(out.read_text())))
            log(json.dumps(asdict(outcomes[-1])))
    print_table(outcomes)
    if not args.no_save:
        # Merged by (scenario, broker) with what an earlier run of other scenarios saved.
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "faults.json"
        kept = json.loads(path.read_text())["outcomes"] if path.exists() else []
        fresh = {(o.scenario, o.broker) for o in outcomes}
        merged = [o for o in kept if (o["scenario"], o["broker"]) not in fresh]
        path.write_text(
            json.dumps({"burst": BURST, "task_seconds": TASK_SECONDS,
                        "workers": WORKERS, "concurrency": CONCURRENCY,
                        "operator_burst": OPERATOR_BURST,
                        "outcomes": merged + [asdict(o) for o in outcomes]}, indent=2) + "\n"
        )  # fmt: skip


def print_table(outcomes: list[Outcome]) -> None:
    head = ("scenario", "broker", "submitted", "succeeded", "failed as designed", "revoked",
            "lost", "run twice", "restarted (cut mid-run)", "recover s")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for o in outcomes:
        print("| " + " | ".join(str(v) for v in (
            o.scenario, o.broker, o.submitted, o.succeeded, o.failed_as_designed,
            o.revoked, o.lost, o.run_twice, o.restarted, o.recover_seconds)) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
