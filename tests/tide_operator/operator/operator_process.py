"""``tide operator`` as a process of its own, logged in to the API emulator with a kubeconfig.

The command the chart runs, in namespace scope, so a test or the chaos bench can SIGKILL it
(a crash, an OOM kill) or SIGTERM it (a rolling update, a drain) and start another, as a
Deployment replaces its pod. Each process logs in with ``token`` (the emulator knows the
operator by ``OPERATOR_TOKEN``, or a gateway in front of it by its own token) and is named
by ``POD_ID``, which is also its identity in the ``tide-operator`` Lease.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

TIDE = Path(sys.executable).with_name("tide")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OperatorProcess:
    """``tide operator --namespace NAMESPACE`` named ``name``, until stopped."""

    def __init__(
        self,
        name: str,
        *,
        url: str,
        token: str,
        folder: Path,
        namespace: str = "default",
        env: Mapping[str, str] | None = None,
        lease_duration: int | None = None,
        lease_renew: float | None = None,
    ) -> None:
        self.name = name
        self.metrics_port = free_port()
        kubeconfig = folder / f"kubeconfig-{name}"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                    "users": [{"name": name, "user": {"token": token}}],
                    "contexts": [
                        {"name": "emulator", "context": {"cluster": "emulator", "user": name}}
                    ],
                    "current-context": "emulator",
                }
            )
        )
        base = os.environ if env is None else env
        environment = {k: v for k, v in base.items() if not k.startswith(("KUBE", "POD_"))}
        environment.update(POD_ID=name, KUBECONFIG=str(kubeconfig))
        argv = [
            str(TIDE), "operator", "--namespace", namespace,
            "--metrics-addr", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
        ]  # fmt: skip
        if lease_duration is not None:
            argv += ["--lease-duration", str(lease_duration)]
        if lease_renew is not None:
            argv += ["--lease-renew", str(lease_renew)]
        self.log = folder / f"operator-{name}.log"
        self.process = subprocess.Popen(
            argv, env=environment, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        self.started = time.time()

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 60) -> None:
        """Send ``sig`` and wait for the process to end."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]
