"""Benchmark: every built-in trace through every policy, unseen seeds, and the simulator's speed.

Run ``flock /tmp/tide_bench.lock nice .venv/bin/python bench/bench_simulator.py``. It prints
and saves (``bench/results/simulator/``: ``results.json``, ``table.txt``, a PNG per trace):

1. every built-in trace at the seed the policy was tuned on (``--seed``, 0), through every
   policy, with the goals of issue 13 checked for Tide against keda-default and keda-tuned
   of the same run;
2. the shapes added after tuning (``UNSEEN_TRACES``: floods of ~10 ms tasks, a handful of
   8-minute tasks, retry echoes after a burst, a slow ramp with a cliff, a heavy-tailed
   diurnal mix) and the diurnal trace, at seeds that were never used while tuning
   (``--unseen-seeds``, 101 202 303 404 505), through Tide and both KEDA settings;
   ``tide-consolidate`` (``shutdown.consolidate: true``) runs beside Tide's default and is
   checked against the same goals;
3. a 24-hour trace of one million tasks replayed through Tide (target: under 60 s).

Every policy runs with the WorkerPool's default grace period (300 s), so tasks cut at its end
count as interrupted and their work as waste.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from tide_operator.simulation.baselines import EXTRA_POLICIES, POLICIES, make_controller
from tide_operator.simulation.cli import run_comparison
from tide_operator.simulation.report import (
    Summary,
    TargetCheck,
    check_targets,
    plot_trace,
    render_table,
    render_targets,
    summarize,
    write_json,
)
from tide_operator.simulation.simulator import SimSettings, simulate
from tide_operator.simulation.traces import UNSEEN_TRACES, builtin_trace, diurnal, trace_names

OUT = Path(__file__).parent / "results" / "simulator"
UNSEEN_POLICIES = ("tide", "keda-default", "keda-tuned", "tide-consolidate")
# Tide with shutdown.consolidate: true, checked against the same goals.
CONSOLIDATE = "tide-consolidate"


def _goals(summaries: list[Summary], *, max_wait: float) -> list[TargetCheck]:
    """The goals for Tide's default and for Tide with ``shutdown.consolidate``."""
    from dataclasses import replace

    checks = check_targets(summaries, max_wait=max_wait)
    checks += [
        replace(c, target=f"consolidate: {c.target}")
        for c in check_targets(summaries, max_wait=max_wait, policy=CONSOLIDATE)
    ]
    return checks


def replay_million(settings: SimSettings, *, seed: int) -> tuple[int, float, float]:
    """(tasks, seconds to generate, seconds to replay) for 1M tasks over 24 h."""
    started = time.perf_counter()
    trace = diurnal(seed, hours=24.0, mean_rate=1_000_000 / 86_400)
    generated = time.perf_counter() - started
    controller = make_controller("tide", settings=settings, trace=trace)
    started = time.perf_counter()
    result = simulate(trace, controller, settings=settings)
    replayed = time.perf_counter() - started
    assert result.completed == trace.tasks
    return trace.tasks, generated, replayed


def _renamed(summary: Summary, name: str) -> Summary:
    from dataclasses import replace

    return replace(summary, trace=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen-seeds", type=int, nargs="+", default=[101, 202, 303, 404, 505])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="only these traces")
    args = parser.parse_args()

    settings = SimSettings()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=220, record=True)
    heading = (
        f"concurrency {settings.concurrency}, startup {settings.startup_delay:.0f}s, "
        f"max wait {settings.max_wait:.0f}s, max {settings.max_replicas} replicas, "
        f"grace period {settings.grace_period:.0f}s"
    )

    tuned: list[Summary] = []
    for name in args.only or trace_names():
        trace = builtin_trace(name, seed=args.seed)
        results = run_comparison(trace, list(POLICIES + EXTRA_POLICIES), settings=settings)
        tuned.extend(summarize(r) for r in results)
        plot_trace(results, args.out / f"{name}.png", title=f"{name}: {trace.description}")
        console.print(
            f"{name}: {trace.tasks:,} tasks, replayed in "
            + ", ".join(f"{r.policy} {r.wall_seconds:.2f}s" for r in results)
        )
    checks: list[TargetCheck] = _goals(tuned, max_wait=settings.max_wait)
    render_table(tuned, console=console, title=f"Built-in traces, seed {args.seed}: {heading}")

    unseen: list[Summary] = []
    for name in ("diurnal", *UNSEEN_TRACES):
        if args.only is not None and name not in args.only:
            continue
        for seed in args.unseen_seeds:
            trace = builtin_trace(name, seed=seed)
            results = run_comparison(trace, list(UNSEEN_POLICIES), settings=settings)
            unseen.extend(_renamed(summarize(r), f"{name}@{seed}") for r in results)
            console.print(f"{name}@{seed}: {trace.tasks:,} tasks")
    unseen_checks = _goals(unseen, max_wait=settings.max_wait)
    render_table(
        unseen,
        console=console,
        title=f"Unseen seeds {', '.join(map(str, args.unseen_seeds))}: {heading}",
    )
    checks += unseen_checks
    render_targets(checks, console=console)
    met = sum(c.met for c in checks)
    console.print(f"goals met: {met}/{len(checks)}")
    for c in checks:
        if not c.met:
            console.print(f"MISSED {c.trace}: {c.target} ({c.detail})")

    speed: dict[str, float] = {}
    if not args.skip_million:
        tasks, generated, replayed = replay_million(settings, seed=args.seed)
        speed = {"tasks": tasks, "generate_seconds": generated, "replay_seconds": replayed}
        console.print(
            f"1M-task replay: {tasks:,} tasks over 24 h generated in {generated:.2f}s, "
            f"replayed through tide in {replayed:.2f}s (target < 60 s)"
        )
    write_json(
        args.out / "results.json",
        summaries=[*tuned, *unseen],
        checks=checks,
        settings={
            "concurrency": settings.concurrency,
            "startup_delay": settings.startup_delay,
            "max_wait": settings.max_wait,
            "max_replicas": settings.max_replicas,
            "grace_period": settings.grace_period,
            "seed": args.seed,
            "unseen_seeds": args.unseen_seeds,
            "million_task_replay": speed,
        },
    )
    (args.out / "table.txt").write_text(console.export_text())


if __name__ == "__main__":
    main()
