"""Benchmark: one operator process with 1, 100 and 1,000 WorkerPools against the API emulator.

Run ``.venv/bin/python bench/bench_operator.py`` (``--pools 1 100`` for a quick run). For
each size it starts the kmock-based emulator from the operator tests, a fake exporter with
one queue per pool, and the real operator (``kopf.operator`` with the Tide registry) in one
event loop, in real time, then measures:

* reconcile time per pool (the ``tide_operator_reconcile_duration_seconds`` histogram);
* memory (RSS of the process, which also holds the emulator and the exporter: an upper
  bound for the operator);
* API requests per minute at steady state, reads and writes apart (target: no writes when
  nothing changes);
* the time from a metric change to the replica patch, for a sample of pools (target:
  within one polling interval plus 1 s; KEDA's default is 30 s polling plus the HPA's
  15 s sync).

Figures go to stdout and ``bench/results/operator.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import kmock
import kopf
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tide_operator" / "operator"))

from kube_emulator import TideEmulator  # noqa: E402

from tide_operator.handlers import Runtime, build_registry, make_settings  # noqa: E402
from tide_operator.kube import Connection, KubeApi  # noqa: E402
from tide_operator.metrics import OperatorMetrics  # noqa: E402

OUT = ROOT / "bench" / "results" / "operator.json"
NS = "bench"
POLLING = 5.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Exporter:
    def __init__(self) -> None:
        self.waiting: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        lines = ["# TYPE celery_queue_length gauge"]
        lines += [f'celery_queue_length{{queue_name="{q}"}} {n}' for q, n in self.waiting.items()]
        lines += ["# TYPE celery_queue_inflight gauge"]
        lines += [f'celery_queue_inflight{{queue_name="{q}"}} 0' for q in self.waiting]
        return web.Response(text="\n".join(lines) + "\n")


def pool(i: int, exporter_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": f"p{i}", "namespace": NS},
        "spec": {
            "queues": [f"q{i}"],
            "template": {"image": "tide:bench"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "pollingInterval": POLLING,
            "metrics": {"exporter": {"url": exporter_url}},
        },
    }


def ready_pools(emulator: TideEmulator) -> int:
    count = 0
    for (resource, _, _), obj in list(emulator.objects.items()):
        if obj.deleted or getattr(resource, "plural", None) != "workerpools":
            continue
        conditions = (obj.raw.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            count += 1
    return count


def replicas(emulator: TideEmulator, name: str) -> int | None:
    try:
        found = emulator.objects["apps/v1/deployments", NS, name]
    except KeyError:
        return None
    return None if found.deleted else found.raw.get("spec", {}).get("replicas")


async def wait_until(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def run(pools: int, *, window: float, samples: int) -> dict[str, Any]:
    exporter = Exporter()
    app = web.Application()
    app.router.add_get("/metrics", exporter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    exporter.url = f"http://127.0.0.1:{port}/metrics"
    for i in range(pools):
        exporter.waiting[f"q{i}"] = 0

    async with TideEmulator() as emulator, kmock.Server(emulator):
        url = str(emulator.url)
        api = KubeApi(Connection(server=url, insecure=True))
        rss_before = rss_mb()
        metrics = OperatorMetrics()
        runtime = Runtime(
            metrics=metrics,
            login=lambda settings: kopf.ConnectionInfo(server=url, insecure=True),
            settings=make_settings(),
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(runtime),
                settings=runtime.settings,
                standalone=True,
                clusterwide=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        )
        await ready.wait()
        started = time.monotonic()
        for i in range(pools):
            await api.create(
                f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools", pool(i, exporter.url)
            )
        await wait_until(
            lambda: ready_pools(emulator) == pools, timeout=120 + pools * 0.5, what="pools ready"
        )
        converge = time.monotonic() - started
        # Let the first status writes and kopf's own bookkeeping settle.
        await asyncio.sleep(2 * POLLING)

        reads0, writes0 = emulator.reads, len(emulator.writes)
        scrapes_started = time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - scrapes_started
        reads = emulator.reads - reads0
        steady_writes = emulator.writes[writes0:]
        rss_steady = rss_mb()

        count = (
            metrics.registry.get_sample_value("tide_operator_reconcile_duration_seconds_count") or 0
        )
        total = (
            metrics.registry.get_sample_value("tide_operator_reconcile_duration_seconds_sum") or 0
        )

        latencies = []
        step = max(1, pools // samples)
        for i in list(range(0, pools, step))[:samples]:
            name = f"p{i}-workers"
            before = len(emulator.writes)
            exporter.waiting[f"q{i}"] = 5
            changed = time.monotonic()
            await wait_until(lambda name=name: replicas(emulator, name) == 5, timeout=60, what=name)
            latencies.append(time.monotonic() - changed)
            assert any(p.endswith(f"{name}/scale") for _, p in emulator.writes[before:])

        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=60)
        await api.aclose()
    await runner.cleanup()
    return {
        "pools": pools,
        "polling_interval_s": POLLING,
        "converge_s": round(converge, 2),
        "reconcile_per_pool_ms_mean": round(1000 * total / count, 2) if count else None,
        "reconciles": int(count),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_steady": round(rss_steady, 1),
        "rss_mb_per_pool": round((rss_steady - rss_before) / pools, 3),
        "steady_window_s": round(elapsed, 1),
        "api_reads_per_min": round(reads * 60 / elapsed, 1),
        "api_writes_per_min": round(len(steady_writes) * 60 / elapsed, 1),
        "steady_writes": [f"{m} {p}" for m, p in steady_writes[:10]],
        "change_to_patch_s": {
            "samples": len(latencies),
            "p50": round(statistics.median(latencies), 2),
            "max": round(max(latencies), 2),
            "target": POLLING + 1.0,
            "keda_default": 30.0 + 15.0,
        },
    }


def main() -> None:
    global POLLING
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--window", type=float, default=30.0, help="steady-state seconds")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--polling",
        type=float,
        default=POLLING,
        help="pools' pollingInterval; 1,000 pools at 5 s exceed what the in-process emulator "
        "serves (~80 requests/s), so the large size is run with a longer interval",
    )
    args = parser.parse_args()
    POLLING = args.polling
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("kopf", "httpx", "aiohttp", "tide_operator"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    results = []
    for pools in args.pools:
        result = asyncio.run(run(pools, window=args.window, samples=args.samples))
        results.append(result)
        print(json.dumps(result, indent=2), flush=True)
    report = {
        "benchmark": "operator",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "note": "one process holds the operator, the kmock emulator and the fake exporter",
        "polling_interval_s": POLLING,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    for r in results:
        c = r["change_to_patch_s"]
        print(
            f"{r['pools']:>5} pools: reconcile {r['reconcile_per_pool_ms_mean']} ms/pool, "
            f"RSS {r['rss_mb_steady']} MB, {r['api_reads_per_min']} reads/min, "
            f"{r['api_writes_per_min']} writes/min at steady state, "
            f"change->patch p50 {c['p50']} s max {c['max']} s (target {c['target']} s)"
        )


if __name__ == "__main__":
    main()
