"""Benchmark of the Helm chart: render time and what each scenario renders.

For every ``charts/tide/ci/*-values.yaml`` scenario: the median wall time of ``helm
template`` over several runs (the WorkerPool API declared, as after the first install),
the number of objects and their kinds, and the number of containers. Also the time of
``helm lint --strict`` on the default values. Renders are whole ``helm`` processes, so the
time includes helm's start-up, which is what a user or CI pays.

Prints a table and writes ``bench/results/chart.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "tide"
HELM = str(Path(sys.executable).with_name("helm"))
RUNS = 7


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out


def main() -> None:
    results: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "helm": subprocess.run(
            [HELM, "version", "--short"], capture_output=True, text=True
        ).stdout.strip(),
        "runs": RUNS,
        "scenarios": {},
    }
    scenarios: dict[str, object] = {}
    for values in sorted((CHART / "ci").glob("*-values.yaml")):
        argv = [HELM, "template", "tide", str(CHART), "-n", "tide", "-f", str(values)]
        argv += ["--api-versions", "tide.dev/v1alpha1/WorkerPool"]
        times, out = [], ""
        for _ in range(RUNS):
            seconds, out = timed(argv)
            times.append(seconds)
        objects = [o for o in yaml.safe_load_all(out) if o]
        containers = sum(
            len(o["spec"]["template"]["spec"]["containers"])
            for o in objects
            if o["kind"] in {"Deployment", "StatefulSet", "Job"}
        )
        scenarios[values.name.removesuffix("-values.yaml")] = {
            "render_seconds_median": round(statistics.median(times), 4),
            "render_seconds_max": round(max(times), 4),
            "objects": len(objects),
            "containers": containers,
            "kinds": dict(sorted(Counter(o["kind"] for o in objects).items())),
        }
    results["scenarios"] = scenarios
    lint_seconds, _ = timed([HELM, "lint", "--strict", str(CHART)])
    results["lint_seconds"] = round(lint_seconds, 4)

    print(f"{'scenario':<12} {'render (median)':>16} {'objects':>8} {'containers':>11}")
    for name, row in scenarios.items():
        assert isinstance(row, dict)
        print(
            f"{name:<12} {row['render_seconds_median'] * 1000:>13.0f} ms "
            f"{row['objects']:>8} {row['containers']:>11}"
        )
    print(f"helm lint --strict: {lint_seconds * 1000:.0f} ms")
    out_path = REPO / "bench" / "results" / "chart.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
