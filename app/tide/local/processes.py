"""A small supervisor for the child processes of local mode.

It owns the processes it starts and nothing else: each child runs in its own process group,
so a Ctrl-C in the terminal reaches the supervisor alone, which then stops children in
reverse order with SIGTERM (Celery's warm shutdown: finish running tasks, take nothing
new) and waits. A second Ctrl-C, or the grace period running out, sends SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``argv`` in its own process group, in ``env`` (default: the supervisor's)."""
        stdout = open(log, "ab") if log else None  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            list(argv),
            env=dict(self.env if env is None else env),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            # Own process group: the terminal's SIGINT goes to us, not straight to it.
            start_new_session=True,
        )
        child = Child(name=name, argv=argv, process=process)
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def stop(self, *, grace: float = 60.0, force: bool = False) -> None:
        """Stop every child, last started first; SIGKILL what outlives ``grace``."""
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
