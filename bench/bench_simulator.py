"""Benchmark: every built-in trace through every policy, plus the simulator's own speed.

Run ``.venv/bin/python bench/bench_simulator.py``. It prints the comparison table and the
issue's targets (Tide against ``keda-default`` and ``keda-tuned`` of the same run, with the
same startup delay and maximum wait), writes ``bench/results/simulator/results.json``,
``table.txt`` and one PNG per trace, and replays a 24-hour trace of one million tasks through
Tide's policy to measure the simulator's speed (target: under 60 s on one core).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from tide_operator.simulation.baselines import (
    EXTRA_POLICIES,
    POLICIES,
    make_controller,
    tide_config,
)
from tide_operator.simulation.cli import run_comparison
from tide_operator.simulation.report import (
    Summary,
    check_targets,
    plot_trace,
    render_table,
    render_targets,
    summarize,
    write_json,
)
from tide_operator.simulation.simulator import SimSettings, simulate
from tide_operator.simulation.traces import builtin_trace, diurnal, trace_names

OUT = Path(__file__).parent / "results" / "simulator"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip-million", action="store_true")
    args = parser.parse_args()

    settings = SimSettings()
    policies = list(POLICIES + EXTRA_POLICIES)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=150, record=True)
    summaries: list[Summary] = []
    for name in trace_names():
        trace = builtin_trace(name, seed=args.seed)
        results = run_comparison(trace, policies, settings=settings)
        summaries.extend(summarize(r) for r in results)
        plot_trace(results, args.out / f"{name}.png", title=f"{name}: {trace.description}")
        console.print(
            f"{name}: {trace.tasks:,} tasks, replayed in "
            + ", ".join(f"{r.policy} {r.wall_seconds:.2f}s" for r in results)
        )
    window = tide_config(settings).behavior.scale_down.stabilization_window_seconds
    checks = check_targets(summaries, max_wait=settings.max_wait, window=window)
    render_table(
        summaries,
        console=console,
        title=(
            f"concurrency {settings.concurrency}, startup {settings.startup_delay:.0f}s, "
            f"max wait {settings.max_wait:.0f}s, max {settings.max_replicas} replicas, "
            f"seed {args.seed}"
        ),
    )
    render_targets(checks, console=console)
    met = sum(c.met for c in checks)
    console.print(f"targets met: {met}/{len(checks)}")

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
        summaries=summaries,
        checks=checks,
        settings={
            "concurrency": settings.concurrency,
            "startup_delay": settings.startup_delay,
            "max_wait": settings.max_wait,
            "max_replicas": settings.max_replicas,
            "baseline_grace_period": settings.baseline_grace_period,
            "seed": args.seed,
            "million_task_replay": speed,
        },
    )
    (args.out / "table.txt").write_text(console.export_text())


if __name__ == "__main__":
    main()
