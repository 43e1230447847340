"""Benchmark of local mode on real workers: how fast does a burst get served, with Tide's
policy and with the ``keda-default`` model (KEDA's documented defaults) deciding instead.

For each policy, in one run: a fresh ``tide up`` (one pool, min 0, max 4 workers of 2
slots, polling 5 s), a burst of jobs through the API, then from the job rows:
reaction = first submission → first task started (a worker added from zero consuming),
drain = first submission → last task finished. Prints the table and the drain ratio and
saves ``bench/results/local.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg2

from scratch_databases import recreate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
DB = "tide_bench_local"
BURST = 400
REPEATS = 2
TASK_SECONDS = 0.5
POOL = """\
apiVersion: tide.dev/v1alpha1
kind: WorkerPool
metadata: {name: bench}
spec:
  queues: [io]
  concurrency: 2
  minReplicas: 0
  maxReplicas: 4
  maxWaitSeconds: 30
  cooldownPeriod: 30
  pollingInterval: 5
  template: {image: tide}
  metrics: {exporter: {url: "http://127.0.0.1:9808/metrics"}}
"""


def run(policy: str) -> dict[str, float | str]:
    recreate(DB)
    work = Path(tempfile.mkdtemp(prefix="tide-bench-local-"))
    (work / "pool.yaml").write_text(POOL)
    port, exporter_port = 8790, 9890
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.local",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        "CELERY_BROKER_KEYPREFIX": f"tide-bench-{uuid.uuid4().hex[:6]}:",
        "TIDE_VAR_DIR": str(work / "var"),
    }
    up = subprocess.Popen(
        [
            str(BIN / "tide"),
            "up",
            "--no-ui",
            "--no-flower",
            "--policy",
            policy,
            "--pools",
            str(work / "pool.yaml"),
            "--port",
            str(port),
            "--exporter-port",
            str(exporter_port),
        ],
        env=env,
        stdout=(work / "up.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        token_file = work / "var" / "api-token"
        deadline = time.monotonic() + 60
        while True:
            try:
                if token_file.exists() and httpx.get(f"http://127.0.0.1:{port}/healthz").is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError((work / "up.log").read_text()[-2000:])
            time.sleep(0.2)
        # Let the first decisions settle at zero workers before the burst.
        time.sleep(3)
        # Submit from several threads so the burst lands in a second or two, as a real
        # burst does, instead of trickling in at one client's pace.
        from concurrent.futures import ThreadPoolExecutor

        from tide.local.load import Client

        loader = Client(f"http://127.0.0.1:{port}", token_file.read_text().strip())
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(
                pool.map(
                    lambda _: loader.submit(TASK_SECONDS, task="tide.samples.io_bound"),
                    range(BURST),
                )
            )
        if not all(ids):
            raise RuntimeError("the API refused part of the burst")
        conn = psycopg2.connect(env["DATABASE_URL"])
        conn.autocommit = True
        deadline = time.monotonic() + 600
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM jobs_job WHERE state = 'succeeded'")
                if cur.fetchone()[0] == BURST:  # type: ignore[index]
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("burst did not drain")
                time.sleep(0.5)
            cur.execute(
                "SELECT extract(epoch FROM min(started_at) - min(created_at)),"
                " extract(epoch FROM max(finished_at) - min(created_at)),"
                " extract(epoch FROM max(created_at) - min(created_at)) FROM jobs_job"
            )
            reaction, drain, submit = (float(v) for v in cur.fetchone())  # type: ignore[union-attr]
        conn.close()
        return {
            "policy": policy,
            "jobs": BURST,
            "task_seconds": TASK_SECONDS,
            "submit_seconds": round(submit, 2),
            "reaction_seconds": round(reaction, 2),
            "drain_seconds": round(drain, 2),
            "floor_seconds": round(BURST * TASK_SECONDS / 8, 2),
        }
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)


def main() -> None:
    # Alternate the policies so a noisy minute on the machine does not favour one; KEDA's
    # 30 s polling phase against the burst varies between runs, hence the repeats.
    results = [run(policy) for _ in range(REPEATS) for policy in ("tide", "keda-default")]

    def mean(policy: str, key: str) -> float:
        values = [float(r[key]) for r in results if r["policy"] == policy]
        return round(sum(values) / len(values), 2)

    summary = {
        "runs": results,
        "mean": {
            p: {k: mean(p, k) for k in ("reaction_seconds", "drain_seconds")}
            for p in ("tide", "keda-default")
        },
        "drain_ratio_tide_to_keda_default": round(
            mean("tide", "drain_seconds") / mean("keda-default", "drain_seconds"), 3
        ),
        "reaction_ratio_tide_to_keda_default": round(
            mean("tide", "reaction_seconds") / mean("keda-default", "reaction_seconds"), 3
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
