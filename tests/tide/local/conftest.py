"""Fixtures for local mode: a ``tide up`` process on the test database and broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from django.conf import settings

from tide.local.environment import free_port
from tide.settings.test import broker_key_prefix

BIN = Path(sys.executable).parent


@dataclass
class Platform:
    process: subprocess.Popen[bytes]
    api: httpx.Client
    var: Path
    pool: str
    # A Celery app on the platform's own broker keyspace, for ping and inspect.
    control: Celery
    exporter_port: int = 0

    def workers(self) -> list[str]:
        """Worker hostnames of the pool that answer a ping: Celery's own view."""
        replies = self.control.control.ping(timeout=0.5) or []
        return sorted(h for reply in replies for h in reply if h.startswith(f"{self.pool}-"))

    def processes(self) -> list[int]:
        """Every process of the pool's workers (main and pool children), as the OS sees them."""
        found = subprocess.run(
            ["pgrep", "-f", "--", f"--hostname {self.pool}-"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(pid) for pid in found.stdout.split()]

    def decisions(self, last: int = 15) -> str:
        """The autoscaler's last decisions: one JSON line per step in ``var/tide-up.log``,
        which ``tide up`` writes beside its live view."""
        log = self.var / "tide-up.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join([line for line in lines if '"decision"' in line][-last:])

    def pid_running(self, hostname: str, task_id: str) -> int | None:
        """The pool process running ``task_id``, as the worker itself reports it."""
        replies = self.control.control.inspect(destination=[hostname], timeout=1.0).active() or {}
        for task in replies.get(hostname, []):
            if task["id"] == task_id:
                return int(task["worker_pid"])
        return None


POOL = """\
apiVersion: tide.dev/v1alpha1
kind: WorkerPool
metadata: {{name: {name}}}
spec:
  queues: [default, io]
  concurrency: 2
  minReplicas: 0
  maxReplicas: 4
  maxWaitSeconds: 10
  cooldownPeriod: 5
  pollingInterval: 1
  staleAfterSeconds: 5
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 5
      policies: [{{type: Percent, value: 100, periodSeconds: 5}}]
  shutdown: {{gracePeriodSeconds: 60}}
  template: {{image: tide}}
  metrics: {{exporter: {{url: "http://127.0.0.1:9808/metrics"}}}}
"""


@pytest.fixture
def platform(
    worker_env: dict[str, str], tmp_path: Path, wait: Any, transactional_db: Any
) -> Iterator[Platform]:
    name = f"e2e{os.getpid()}"
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOL.format(name=name))
    port, exporter_port = free_port(), free_port()
    # The platform gets a broker keyspace of its own (the test settings derive the key
    # prefix from TIDE_TEST_RUN): messages other tests left behind, such as ETA jobs an
    # hour away, would otherwise be real work to this pool and rightly keep a worker up.
    # Nested under the session's prefix, so the session's key clean-up removes it too.
    run = f"{worker_env['TIDE_TEST_RUN']}:{name}"
    prefix = broker_key_prefix(run)
    env = {
        **worker_env,
        "TIDE_VAR_DIR": str(tmp_path / "var"),
        "TIDE_TEST_RUN": run,
        # Given explicitly, `tide up` keeps it rather than choosing one per var directory.
        "CELERY_BROKER_KEYPREFIX": prefix,
    }
    control = Celery("tide-e2e", set_as_current=False)
    control.conf.update(
        broker_url=settings.CELERY_BROKER_URL,
        broker_transport_options={
            **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            "global_keyprefix": prefix,
        },
    )
    process = subprocess.Popen(
        [
            str(BIN / "tide"),
            "up",
            # The live view on, as people run it (it renders to the log file here).
            "--no-flower",
            "--pools",
            str(pools),
            "--port",
            str(port),
            "--exporter-port",
            str(exporter_port),
        ],
        env=env,
        stdout=(tmp_path / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    var = tmp_path / "var"
    token_file = var / "api-token"

    def api_ready() -> bool:
        if process.poll() is not None:
            pytest.fail((tmp_path / "up.log").read_text()[-3000:])
        try:
            return token_file.exists() and httpx.get(f"http://127.0.0.1:{port}/healthz").is_success
        except httpx.HTTPError:
            return False

    wait(api_ready, timeout=60, what="tide up's API")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,
        headers={"Authorization": f"Token {token_file.read_text().strip()}"},
    )
    yield Platform(process, client, var, name, control, exporter_port)
    client.close()
    if process.poll() is None:
        # The clean path first: tide up stops its services and workers itself.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Whatever a failed run left behind must not outlive the test (or hold the test DB).
    for pattern in (f"--hostname {name}-", f"127.0.0.1:{port}", f"--port {exporter_port}"):
        subprocess.run(["pkill", "-9", "-f", "--", pattern], check=False)
    control.close()
