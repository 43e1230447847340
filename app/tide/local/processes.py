"""A small supervisor for the child processes of local mode, which restarts what dies.

It owns the processes it starts and nothing else: each child runs in its own process group,
so a Ctrl-C in the terminal reaches the supervisor alone, which then stops children in
reverse order with SIGTERM (Celery's warm shutdown: finish running tasks, take nothing
new) and waits. A second Ctrl-C, or the grace period running out, sends SIGKILL.

A child that dies on its own (the exporter killed, the API crashed, Flower out of memory)
is not a reason to stop the platform: ``heal`` starts it again with the same command line,
after a back-off that doubles with each death in a row (1 s, 2 s, 4 s … up to a minute,
as the kubelet's CrashLoopBackOff does), so a child that cannot start does not spin. A
child that stayed up for ``STABLE_SECONDS`` is healthy again and its back-off starts over.
Every death and restart is reported (returned to the caller, who logs and shows it).
Time is an argument, so the policy is tested without sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: First restart delay, doubled per death in a row, capped at ``MAX_BACKOFF``.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: Up this long, a child counts as healthy: its next death starts the back-off over.
STABLE_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes]
    log: str | None = None
    env: Mapping[str, str] | None = None
    started_at: float = field(default_factory=time.monotonic)
    #: Deaths in a row (reset once the child stays up ``STABLE_SECONDS``).
    deaths: int = 0
    restarts: int = 0
    #: When a dead child is due to start again (None: alive, or its death not seen yet).
    restart_at: float | None = None

    def backoff(self) -> float:
        return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, self.deaths - 1))


@dataclass
class Supervisor:
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` in its own process group, in ``env`` (default: the supervisor's)."""
        child = Child(name=name, argv=argv, process=self._spawn(argv, log, env), log=log, env=env)
        self.children.append(child)
        return child

    def _spawn(
        self, argv: Sequence[str], log: str | None, env: Mapping[str, str] | None
    ) -> subprocess.Popen[bytes]:
        stdout = open(log, "ab") if log else None  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                list(argv),
                env=dict(self.env if env is None else env),
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout else None,
                # Own process group: the terminal's SIGINT goes to us, not straight to it.
                start_new_session=True,
            )
        finally:
            if stdout is not None:
                stdout.close()  # the child holds its own descriptor

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def heal(self, *, now: float | None = None) -> list[str]:
        """Restart children that died (after their back-off); say what happened.

        Called every half second or so by ``tide up``. A death is reported once, when it
        is first seen, with the delay before the restart; the restart is reported when
        it happens.
        """
        if self.stopping:
            return []
        now = time.monotonic() if now is None else now
        reports: list[str] = []
        for child in self.children:
            code = child.process.poll()
            if code is None:
                if child.deaths and now - child.started_at >= STABLE_SECONDS:
                    child.deaths = 0
                continue
            if child.restart_at is None:
                # Stable for long enough: this death is the first of a new run.
                if now - child.started_at >= STABLE_SECONDS:
                    child.deaths = 0
                child.deaths += 1
                child.restart_at = now + child.backoff()
                reports.append(
                    f"{child.name} exited with {describe_exit(code)}; restarting in "
                    f"{child.backoff():.0f} s (death {child.deaths} in a row)"
                )
                continue
            if now >= child.restart_at:
                child.process = self._spawn(child.argv, child.log, child.env)
                child.started_at, child.restart_at = now, None
                child.restarts += 1
                reports.append(f"{child.name} restarted (restart {child.restarts})")
        return reports

    def stop(self, *, grace: float = 60.0, force: bool = False) -> None:
        """Stop every child, last started first; SIGKILL what outlives ``grace``."""
        self.stopping = True
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def describe_exit(code: int) -> str:
    """An exit status as a person reads it: a signal by name, else the exit code."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
