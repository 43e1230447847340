"""Local worker processes as a scale target: what a Deployment is in the cluster.

Each replica is a worker process of the pool's app consuming the pool's queues, named
``<pool>-<n>@<host>``: the pool's program (``celery -A <app> worker``, or the command its
template gives) with Tide's flags after it, as the operator builds a pod's command line
(queues, slots, node name, prefetch multiplier). The processes run in the environment they
are given, which for a team's app is the team's own, not Tide's settings.

Scaling down sends SIGTERM, Celery's warm shutdown: the worker takes nothing new and exits
when its running tasks are done, so nothing is lost. Workers told to stop no longer count
as capacity (as terminating pods do not), and the idle ones are chosen first, found by
asking the pool's own workers what they run (``inspect active``/``reserved``, addressed to
those hostnames only), through the operator's probe built with the app's broker and
transport options. The same probe says what the workers run (``inspect conf``/``stats``),
so ``SafeScaleIn`` is decided locally as in the cluster.

A worker process that exits on its own (OOM kill, a crash, ``kill -9``) is handed to
``recoveries`` (``tide_celery.recovery.Recoveries``) when it is reaped: on Redis the messages
it held unacknowledged go back to their queues once its lease lapses (seconds), not after
the transport's visibility timeout.

Scaling up first asks the pool's ``TaskGuard`` (``tide.local.guard``) whether the queues
hold tasks the app would discard; a refusal leaves the pool as it is and is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tide.local.guard import UNKNOWN_TASKS, TaskGuard
from tide.local.pools import LocalPool
from tide.local.processes import FIRST_BACKOFF, MAX_BACKOFF, STABLE_SECONDS, describe_exit
from tide_celery.recovery import Recoveries
from tide_operator.adapters.targets import (
    CeleryInspectProbe,
    TargetUnavailable,
    WorkerFactsCache,
)
from tide_operator.resources.safety import WorkerFacts

log = logging.getLogger("tide.local.workers")


def _tide_probe() -> CeleryInspectProbe:
    from tide.celery import app

    return CeleryInspectProbe(
        app.conf.broker_url,
        timeout=1.0,
        transport_options=app.conf.broker_transport_options,
    )


def resolve(program: str) -> str:
    """A program named by the pool: on PATH, else beside this Python (the virtualenv)."""
    beside = Path(sys.executable).with_name(program)
    if "/" not in program and beside.exists():
        return str(beside)
    return shutil.which(program) or program


@dataclass
class Replica:
    hostname: str
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class LocalWorkers:
    pool: LocalPool
    env: Mapping[str, str]
    log_dir: Path
    #: The worker's command line up to and including ``worker`` (Tide's app by default).
    program: Sequence[str] = ("celery", "-A", "tide", "worker")
    running: dict[str, Replica] = field(default_factory=dict)
    stopping: dict[str, Replica] = field(default_factory=dict)
    # The operator's probe (inspect addressed to these workers only), on their broker.
    probe: CeleryInspectProbe = field(default_factory=_tide_probe)
    #: Checks the queues before workers start; None: no check.
    guard: TaskGuard | None = None
    #: What the guard said last (a report, or why the pool waits), for the view.
    warning: str = ""
    facts: WorkerFactsCache = field(default_factory=WorkerFactsCache)
    #: Unasked worker deaths in a row, the back-off they set, and reports not yet shown.
    deaths: int = 0
    hold_until: float = 0.0
    reports: list[str] = field(default_factory=list)
    #: Puts back what a dead worker held (Redis); None: left to the visibility timeout.
    recoveries: Recoveries | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def reap(self, *, now: float | None = None) -> list[str]:
        """Forget exited workers; report those that died unasked (not scaled in).

        A dead worker is replaced by the next scaling step, as a Deployment replaces a
        failed pod, after a back-off that doubles per death in a row (the kubelet's
        CrashLoopBackOff), so a worker that cannot start does not spin.
        """
        now = time.monotonic() if now is None else now
        reports: list[str] = []
        for hostname, replica in list(self.running.items()):
            code = replica.process.poll()
            if code is None:
                continue
            del self.running[hostname]
            self._lost(hostname, code)
            if now - replica.started_at >= STABLE_SECONDS:
                self.deaths = 0
            self.deaths += 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.deaths - 1))
            self.hold_until = max(self.hold_until, now + delay)
            reports.append(
                f"worker {hostname} exited with {describe_exit(code)}; replaced in "
                f"{delay:.0f} s or at the next scaling step (death {self.deaths} in a row)"
            )
            log.warning(reports[-1])
        for hostname, replica in list(self.stopping.items()):
            code = replica.process.poll()
            if code is not None:
                del self.stopping[hostname]
                # A warm shutdown leaves nothing held; one killed at the grace's end may.
                self._lost(hostname, code)
        return reports

    def _lost(self, hostname: str, code: int) -> None:
        """Hand an exited worker to dead-worker recovery (Redis; its lease fences it)."""
        if self.recoveries is not None:
            self.recoveries.lost(hostname, reason=f"process exited with {describe_exit(code)}")

    def _reap(self) -> None:
        self.reports.extend(self.reap())

    def take_reports(self) -> list[str]:
        """Reap now, and hand over every death report not handed over yet."""
        self._reap()
        reports, self.reports = self.reports, []
        return reports

    async def current(self) -> int:
        self._reap()
        return len(self.running)

    async def scale(self, replicas: int, *, reason: str) -> None:
        self._reap()
        missing = replicas - len(self.running)
        if missing > 0:
            if time.monotonic() < self.hold_until:
                # Workers died in a row: wait out the back-off; the next step starts them.
                return
            await self._check_queues()
        for _ in range(missing):
            self._start()
        if missing < 0:
            for hostname in await self._idle_first(-missing):
                replica = self.running.pop(hostname)
                replica.process.send_signal(signal.SIGTERM)  # warm shutdown
                self.stopping[hostname] = replica

    async def _check_queues(self) -> None:
        if self.guard is None:
            return
        finding = await asyncio.to_thread(self.guard.check, self.pool.queues)
        if finding is None:
            self.warning = ""
            return
        self.warning = finding.message()
        log.error(self.warning)
        if finding.mode == "refuse":
            raise TargetUnavailable(UNKNOWN_TASKS, self.warning)

    async def mark_idle_first(self, count: int) -> None:
        """Nothing to mark locally: ``scale`` itself picks idle workers."""

    def adopted_template(self) -> None:
        """Local workers are built from the pool: there is no adopted pod template."""
        return None

    async def worker_facts(self, *, now: float) -> WorkerFacts | None:
        """What the pool's workers run, each asked once (``WorkerFactsCache``)."""
        self._reap()
        hosts = sorted(self.running)
        signature = tuple(hosts)
        if self.facts.due(signature, now):
            await self.facts.refresh(self.probe, hosts, signature=signature, now=now)
        # Local workers carry the names Tide gave them: one that has not answered yet is
        # starting, not unaddressable, so only the answers count.
        return WorkerFacts(answered=self.facts.facts().answered)

    def command(self, hostname: str) -> list[str]:
        """The worker's whole command line: the pool's program, then Tide's flags."""
        spec = self.pool.spec
        program = list(self.program)
        return [
            resolve(program[0]),
            *program[1:],
            "--loglevel",
            "INFO",
            "-Q",
            ",".join(self.pool.queues),
            "--concurrency",
            str(self.pool.concurrency),
            "--hostname",
            hostname,
            f"--prefetch-multiplier={spec.worker.prefetch_multiplier}",
            "--without-gossip",
            "--without-mingle",
            *(spec.template.extra_args if spec.template is not None else ()),
        ]

    def _start(self) -> None:
        hostname = f"{self.pool.name}-{next(self._numbers)}@{socket.gethostname()}"
        log_file = (self.log_dir / f"worker-{hostname.split('@')[0]}.log").open("ab")
        process = subprocess.Popen(
            self.command(hostname),
            env=dict(self.env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C is ours to relay, not theirs
        )
        self.running[hostname] = Replica(hostname, process)

    async def _idle_first(self, count: int) -> list[str]:
        busy = await self.probe.busy(list(self.running))
        # Idle first, then the least busy; among equals the youngest (highest number), as
        # a ReplicaSet does. A busy worker told to stop still finishes its tasks.
        order = sorted(
            self.running,
            key=lambda h: (busy.get(h) or 0, -int(h.split("@")[0].rsplit("-", 1)[1])),
        )
        return order[:count]

    async def drain(self, *, grace: float, force: asyncio.Event) -> None:
        """Warm-shut every worker down; SIGKILL on ``force`` or when ``grace`` runs out."""
        for replica in list(self.running.values()):
            replica.process.send_signal(signal.SIGTERM)
            self.stopping[replica.hostname] = replica
        self.running.clear()
        deadline = asyncio.get_running_loop().time() + grace
        while self.stopping:
            self._reap()
            if force.is_set() or asyncio.get_running_loop().time() > deadline:
                for replica in self.stopping.values():
                    replica.process.kill()
            await asyncio.sleep(0.1)
