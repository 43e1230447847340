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
DB = "tide_bench_faults"
REDIS_PORT = int(os.environ.get("BENCH_FAULTS_REDIS_PORT", "18301"))
RABBIT_VHOST = "tide_bench_faults"
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
        return Counter(line.split()[1] for line in self.ledger.read_text().splitlines())


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


def burst() -> tuple[list[str], set[str]]:
    """BURST io_bound jobs, and one job in forty that fails on purpose."""
    ids = submit(BURST, failing=0)
    failing = set(submit(0, failing=BURST // 40))
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
}
#: Scenarios whose workers `tide up` starts, not the bench.
SELF_MANAGED = {"exporter-outage"}
BROKER_DOWN = 3.0


def run_one(name: str, broker: str, workdir: Path) -> Outcome:
    title, inject = FAULTS[name]
    with platform(broker, workdir) as (plat, server):
        if name not in SELF_MANAGED:
            start_workers(plat)
        ids, failing = burst()
        # Workers start slowly on a busy machine: the faults begin once work runs.
        wait_running(1, timeout=300)
        faults = inject(plat, server, broker)
        settle(ids, deadline=DEADLINE)
        return tally(title, broker, plat, ids, failing=failing, faults=faults)


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
