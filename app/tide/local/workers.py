"""Local worker processes as a scale target: what a Deployment is in the cluster.

Each replica is a ``celery worker`` process consuming the pool's queues, named
``<pool>-<n>@<host>``. Scaling down sends SIGTERM, Celery's warm shutdown: the worker
takes nothing new and exits when its running tasks are done, so nothing is lost. Workers
told to stop no longer count as capacity (as terminating pods do not), and the idle ones
are chosen first, found by asking the pool's own workers what they run (``inspect
active``/``reserved``, addressed to those hostnames only).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tide.local.pools import LocalPool
from tide_operator.adapters.targets import BusyProbe, CeleryInspectProbe


def _local_probe() -> BusyProbe:
    from tide.celery import app

    return CeleryInspectProbe(
        app.conf.broker_url,
        timeout=1.0,
        transport_options=app.conf.broker_transport_options,
    )


@dataclass
class Replica:
    hostname: str
    process: subprocess.Popen[bytes]


@dataclass
class LocalWorkers:
    pool: LocalPool
    env: Mapping[str, str]
    log_dir: Path
    running: dict[str, Replica] = field(default_factory=dict)
    stopping: dict[str, Replica] = field(default_factory=dict)
    # The operator's probe (inspect active/reserved addressed to these workers only).
    probe: BusyProbe = field(default_factory=lambda: _local_probe())
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _reap(self) -> None:
        for group in (self.running, self.stopping):
            for hostname, replica in list(group.items()):
                if replica.process.poll() is not None:
                    del group[hostname]

    async def current(self) -> int:
        self._reap()
        return len(self.running)

    async def scale(self, replicas: int, *, reason: str) -> None:
        self._reap()
        missing = replicas - len(self.running)
        for _ in range(missing):
            self._start()
        if missing < 0:
            for hostname in await self._idle_first(-missing):
                replica = self.running.pop(hostname)
                replica.process.send_signal(signal.SIGTERM)  # warm shutdown
                self.stopping[hostname] = replica

    async def mark_idle_first(self, count: int) -> None:
        """Nothing to mark locally: ``scale`` itself picks idle workers."""

    def _start(self) -> None:
        hostname = f"{self.pool.name}-{next(self._numbers)}@{socket.gethostname()}"
        celery = str(Path(sys.executable).with_name("celery"))
        log = (self.log_dir / f"worker-{hostname.split('@')[0]}.log").open("ab")
        process = subprocess.Popen(
            [
                celery,
                "-A",
                "tide",
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                ",".join(self.pool.queues),
                "--concurrency",
                str(self.pool.concurrency),
                "--hostname",
                hostname,
                "--without-gossip",
                "--without-mingle",
            ],
            env=dict(self.env),
            stdout=log,
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
