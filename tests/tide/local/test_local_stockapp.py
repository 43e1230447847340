"""Local mode for a team's own app: ``tide up --app stockapp`` with the stock app of
``tests/stockapp`` (kombu's defaults, early acks, prefetch 4, Tide's integration in one
line), every part real. A burst of held tasks scales the app's workers up from zero; as
the tasks are released the pool scales in while some still run, and back to zero; every
task submitted completes exactly once, nothing is discarded. And the reported disaster:
``tide up`` with Tide's own app and a pool file naming the stock app's queues refuses to
start, names the tasks, and leaves every message where it was.

The figures of the burst (submitted, time to the first worker, to all three, drained,
back to zero, discarded) are printed (``-s`` shows them); nothing here is timed against a
target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from stockapp_harness import StockBroker, produce, redis_broker, stock_environment

from tide.local.environment import free_port

BIN = Path(sys.executable).parent
HOLD = "stockapp.tasks.hold"
SEP = "\x06\x16"
BURST = 40

POOLS = """\
apiVersion: tide.dev/v1alpha1
kind: WorkerPool
metadata: {name: stock}
spec:
  queues: [orders]
  concurrency: 2
  minReplicas: 0
  maxReplicas: 3
  maxWaitSeconds: 5
  cooldownPeriod: 5
  pollingInterval: 1
  staleAfterSeconds: 5
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 3
      policies: [{type: Percent, value: 100, periodSeconds: 3}]
  shutdown: {gracePeriodSeconds: 120}
  template: {}             # tide up --app names the app; a local pool needs no image
"""


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    log: Path
    exporter: str

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def decisions(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"event": "decision"' in line:
                found.append(json.loads(line[line.index("{") :]))
        return found

    def workers(self) -> list[int]:
        """This ``tide up``'s worker processes (main and pool children), walked down its own
        process tree: another suite's stock pool on the machine is not this one's."""
        table = subprocess.run(
            ["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        children: dict[int, list[tuple[int, str]]] = {}
        for row in table:
            pid, ppid, args = [*row.split(None, 2), ""][:3]
            children.setdefault(int(ppid), []).append((int(pid), args))
        found, stack = [], [self.process.pid]
        while stack:
            for pid, args in children.get(stack.pop(), []):
                stack.append(pid)
                if "--hostname stock-" in args:
                    found.append(pid)
        return found


@pytest.fixture
def broker() -> Iterator[StockBroker]:
    corner = redis_broker()
    yield corner
    corner.cleanup()


def start_up(
    broker: StockBroker, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Up:
    pools = tmp_path / "pools.yaml"
    if not pools.exists():
        pools.write_text(POOLS)
    port = free_port()
    log = tmp_path / "up.log"
    # The team's shell: the stock app's settings, none of Tide's.
    environment = env or stock_environment(broker, **broker.env(acks_late=False))
    process = subprocess.Popen(
        [str(BIN / "tide"), "up", "--no-ui", "--no-flower", "--pools", str(pools),
         "--exporter-port", str(port), "--var", str(tmp_path / "var"), *args],
        env=environment, cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Up(process, log, f"http://127.0.0.1:{port}/metrics")


def stop(up: Up) -> int:
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
        try:
            return up.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.process.kill()
    return up.process.wait()


def test_tide_up_scales_the_stock_apps_workers_and_discards_nothing(
    broker: StockBroker, tmp_path: Path, wait: Any
) -> None:
    up = start_up(broker, tmp_path, "--app", "stockapp")
    try:

        def exporting() -> bool:
            if up.process.poll() is not None:
                pytest.fail(up.tail())
            try:
                return 'queue_name="orders"' in httpx.get(up.exporter, timeout=2).text
            except httpx.HTTPError:
                return False

        wait(exporting, timeout=90, what="tide up's exporter on the stock broker", explain=up.tail)
        assert up.workers() == []

        started = time.monotonic()
        produce(broker, [(HOLD, [broker.run], {"queue": "orders"})] * BURST)
        wait(lambda: broker.running() > 0, timeout=60, what="a first worker", explain=up.tail)
        first_worker = time.monotonic() - started
        # Three workers of two slots: six held tasks run at once.
        wait(lambda: broker.running() == 6, timeout=60, what="three workers", explain=up.tail)
        all_three = time.monotonic() - started

        # Release all but three: the queue drains, three tasks still run on the workers,
        # and the pool shrinks under them (the integration counts them: in flight 3).
        broker.release(BURST - 3)
        wait(
            lambda: broker.done() == BURST - 3,
            timeout=120,
            what="the burst to drain but three",
            explain=up.tail,
        )
        drained = time.monotonic() - started
        wait(
            lambda: any(d["reason_code"] == "ScaledDown" for d in up.decisions()),
            timeout=60,
            what="a scale-in while three tasks run",
            explain=lambda: json.dumps(up.decisions()[-5:], indent=1),
        )
        # The scale-in stopped no running task: with no token left a held task ends only
        # if it is cut, so the count of running ones never drops. It need not reach three:
        # under early acks a task is acked as it starts, which frees the prefetch window, so
        # a worker with both slots busy may hold the third one reserved behind them while
        # another worker is idle (Celery's prefetch, seen in CI: 2 running + 1 reserved,
        # "3 in flight" to the integration, for 30 s). A cut task is lost under early acks,
        # and "every task done" below would never come.
        running = broker.running()
        scaled = next(i for i, d in enumerate(up.decisions()) if d["reason_code"] == "ScaledDown")
        wait(
            lambda: len(up.decisions()) > scaled + 2,
            timeout=30,
            what="two decisions after the scale-in",
            explain=up.tail,
        )
        after = up.decisions()[scaled + 2]
        assert after["waiting"] + after["inflight"] == 3, after
        assert 0 < running <= broker.running() <= 3
        broker.release(3)
        wait(lambda: broker.done() == BURST, timeout=60, what="every task done", explain=up.tail)

        # Back to zero after the cooldown: no worker process left.
        wait(lambda: up.workers() == [], timeout=90, what="scale back to zero", explain=up.tail)
        back_to_zero = time.monotonic() - started

        client = broker.client()
        assert client.llen(broker.keyprefix + "orders") == 0
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "var").glob("worker-*"))
        assert "unregistered task" not in logs
        assert broker.done() == BURST  # each exactly once: early acks never redeliver
        # The figures of the run, for the record (pytest -s shows them).
        print(
            json.dumps(
                {
                    "burst": BURST,
                    "first_worker_s": round(first_worker, 1),
                    "three_workers_s": round(all_three, 1),
                    "drained_s": round(drained, 1),
                    "back_to_zero_s": round(back_to_zero, 1),
                    "completed": broker.done(),
                    "discarded": BURST - broker.done(),
                }
            )
        )
    finally:
        broker.release(BURST)
        assert stop(up) == 0, up.tail()


def test_tides_app_on_the_stock_apps_queues_refuses_and_takes_nothing(
    broker: StockBroker, tmp_path: Path
) -> None:
    # The stock app's messages wait: plain ones on orders, priority 5 ones on emails.
    produce(broker, [("stockapp.tasks.place_order", [n], {}) for n in range(5)])
    produce(broker, [("stockapp.tasks.send_email", [f"{n}@x"], {"priority": 5}) for n in range(3)])
    (tmp_path / "pools.yaml").write_text(POOLS.replace("[orders]", "[orders, emails]"))
    # Tide's own app (no --app), pointed at the stock app's broker and key prefix.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.test",
        "CELERY_BROKER_URL": broker.url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
        "DATABASE_URL": "sqlite:////nonexistent/never-opened.sqlite3",
    }
    env.pop("CELERY_BROKER_KEYPREFIX", None)
    up = start_up(broker, tmp_path, env=env)
    assert up.process.wait(timeout=120) == 1, up.tail()
    said = up.tail()
    assert "refusing to start" in said
    assert "the app 'tide' does not register" in said
    assert "stockapp.tasks.place_order (5)" in said
    assert "stockapp.tasks.send_email (3)" in said
    # Nothing started, nothing taken.
    assert up.workers() == []
    client = broker.client()
    assert client.llen(broker.keyprefix + "orders") == 5
    assert client.llen(broker.keyprefix + f"emails{SEP}3") == 3
