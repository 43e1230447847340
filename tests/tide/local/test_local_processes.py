"""Local mode's supervisor heals: a dead child is restarted with back-off and reported.

Real child processes (``sleep``), killed for real; the supervisor's clock is an argument,
so back-off is checked without waiting it out.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tide.local.cli import check_ports
from tide.local.processes import STABLE_SECONDS, Supervisor

BIN = Path(sys.executable).parent


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor()
    yield sup
    sup.stop(grace=5)


def _kill(sup: Supervisor, name: str, wait: Any) -> int:
    child = next(c for c in sup.children if c.name == name)
    child.process.send_signal(signal.SIGKILL)
    child.process.wait(timeout=10)
    return child.process.pid


def test_a_killed_child_is_restarted_after_its_backoff(supervisor: Supervisor, wait: Any) -> None:
    child = supervisor.start("exporter", ["sleep", "600"])
    old_pid = _kill(supervisor, "exporter", wait)
    # Seen dead at t=100: reported with the delay, not restarted yet.
    reports = supervisor.heal(now=100.0)
    assert reports == ["exporter exited with signal SIGKILL; restarting in 1 s (death 1 in a row)"]
    assert supervisor.heal(now=100.5) == []
    assert child.process.poll() is not None
    # Due: the same command line runs again, in a new process.
    assert supervisor.heal(now=101.0) == ["exporter restarted (restart 1)"]
    assert child.process.poll() is None
    assert child.process.pid != old_pid


def test_backoff_doubles_per_death_in_a_row_and_resets_once_stable(
    supervisor: Supervisor, wait: Any
) -> None:
    # Rows: (when the death is seen, the delay it reports). A child that dies again soon
    # after its restart waits twice as long; one that stayed up STABLE_SECONDS starts over.
    child = supervisor.start("api", ["sleep", "600"])
    child.started_at = 0.0
    now = 10.0
    for expected in (1, 2, 4, 8):
        _kill(supervisor, "api", wait)
        (report,) = supervisor.heal(now=now)
        assert f"restarting in {expected} s" in report, report
        now += expected
        assert supervisor.heal(now=now) == [f"api restarted (restart {child.restarts})"]
        now += 1.0  # dies again a second after its restart
    now += STABLE_SECONDS
    _kill(supervisor, "api", wait)
    (report,) = supervisor.heal(now=now)
    assert "restarting in 1 s (death 1 in a row)" in report


def test_nothing_restarts_once_stopping(supervisor: Supervisor, wait: Any) -> None:
    child = supervisor.start("flower", ["sleep", "600"])
    supervisor.stop(grace=5)
    assert child.process.poll() is not None
    assert supervisor.heal(now=1e9) == []
    assert child.process.poll() is not None


def test_a_second_tide_up_on_a_busy_port_names_it_and_fails(tmp_path: Path) -> None:
    # Something already listens on the exporter's port, as a first `tide up` would.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "tide"), "up", "--no-ui", "--no-flower", "--exporter-port", str(port),
             "--var", str(tmp_path / "var"), "--port", "0"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"port {port} for the exporter (--exporter-port) is in use" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything started: not even the var directory was made.
    assert not (tmp_path / "var").exists()


def test_a_port_of_the_last_run_is_free_again_at_once() -> None:
    # `tide up` stopped with Ctrl-C and started again: the ports its servers served from
    # hold connections in TIME_WAIT (the server closed them), and no listener. Each server
    # binds with SO_REUSEADDR and would start; the busy-port check must not refuse it.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its side waits in TIME_WAIT
        client.recv(1)
        client.close()
    waiting = subprocess.run(
        ["ss", "-tanH", "state", "time-wait", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert waiting.strip(), "the test needs a TIME_WAIT connection on the port"
    check_ports({"exporter (--exporter-port)": port})
    # A listener still makes it busy.
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(click.ClickException, match=f"port {port} for the exporter"):
            check_ports({"exporter (--exporter-port)": port})


def test_a_worker_that_dies_is_reported_and_replaced_after_its_backoff(tmp_path: Path) -> None:
    # A worker program that exits at once (`false`), as a worker that crashes on start:
    # its death is reported once, and the pool waits out the back-off before the next.
    import asyncio
    import os

    from tide.local.pools import load_pools
    from tide.local.workers import LocalWorkers

    pool = load_pools(None)[0]
    workers = LocalWorkers(pool=pool, env=dict(os.environ), log_dir=tmp_path, program=("false",))

    async def scenario() -> None:
        await workers.scale(1, reason="test")
        (replica,) = workers.running.values()
        replica.process.wait(timeout=10)
        (report,) = workers.take_reports()
        assert f"worker {replica.hostname} exited with code 1" in report
        assert "death 1 in a row" in report
        assert workers.take_reports() == []  # reported once
        assert await workers.current() == 0
        # Inside the back-off: nothing is started.
        await workers.scale(1, reason="test")
        assert workers.running == {}
        # The back-off over, the next step starts a replacement.
        workers.hold_until = 0.0
        await workers.scale(1, reason="test")
        assert len(workers.running) == 1

    asyncio.run(scenario())
