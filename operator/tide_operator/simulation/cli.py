"""``tide simulate``: replay workload traces through Tide's policy and the baselines.

The command is the thin edge around the pure parts: it resolves trace names or CSV paths
(``traces``), builds one fresh controller per run (``baselines``), replays (``simulator``),
and renders (``report``): a table and the targets in the terminal, ``results.json`` and one
PNG per trace in ``--out``. A newcomer runs ``tide simulate`` and gets the ``bursts`` trace
compared across every policy, with the plot written to ``./tide-simulation/``.

Standalone: ``python -m tide_operator.simulation.cli --trace spike``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import click
from rich.console import Console

from tide_operator.simulation.baselines import (
    EXTRA_POLICIES,
    POLICIES,
    make_controller,
    tide_config,
)
from tide_operator.simulation.report import (
    Summary,
    check_targets,
    plot_trace,
    render_table,
    render_targets,
    summarize,
    write_json,
)
from tide_operator.simulation.simulator import SimResult, SimSettings
from tide_operator.simulation.simulator import simulate as replay
from tide_operator.simulation.traces import Trace, builtin_trace, load_trace, trace_names

__all__ = ["resolve_traces", "run_comparison", "simulate"]


def resolve_traces(
    specs: Sequence[str], *, seed: int, durations: str, queue: str | None
) -> list[Trace]:
    """Built-in names, ``all``, or paths to CSV files, in the order given."""
    traces: list[Trace] = []
    for spec in specs:
        if spec == "all":
            traces.extend(builtin_trace(name, seed=seed) for name in trace_names())
        elif spec in trace_names():
            traces.append(builtin_trace(spec, seed=seed))
        elif Path(spec).is_file():
            traces.append(load_trace(spec, seed=seed, durations=durations, queue=queue))
        else:
            raise click.BadParameter(
                f"{spec!r} is neither a built-in trace ({', '.join(trace_names())}, all) "
                "nor a CSV file",
                param_hint="--trace",
            )
    return traces


def run_comparison(
    trace: Trace, policies: Sequence[str], *, settings: SimSettings
) -> list[SimResult]:
    """Every policy on the same trace with the same settings, timed."""
    results = []
    for name in policies:
        controller = make_controller(name, settings=settings, trace=trace)
        started = time.perf_counter()
        result = replay(trace, controller, settings=settings)
        result.wall_seconds = time.perf_counter() - started
        results.append(result)
    return results


@click.command("simulate")
@click.option(
    "--trace",
    "trace_specs",
    multiple=True,
    default=("bursts",),
    show_default=True,
    help=f"Built-in trace ({', '.join(trace_names())}), 'all', or a CSV path. Repeatable.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(POLICIES + EXTRA_POLICIES),
    help="Policy to run (repeatable). Default: all of " + ", ".join(POLICIES) + ".",
)
@click.option("--seed", default=0, show_default=True, help="Seed for built-in traces.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("tide-simulation"),
    show_default=True,
    help="Directory for results.json and the PNG plots.",
)
@click.option(
    "--startup-delay", default=20.0, show_default=True, help="Seconds until a new replica serves."
)
@click.option("--max-wait", default=60.0, show_default=True, help="Maximum wait target (s).")
@click.option("--concurrency", default=4, show_default=True, help="Slots per replica.")
@click.option("--max-replicas", default=50, show_default=True)
@click.option(
    "--grace-period",
    default=30.0,
    show_default=True,
    help="Baselines' termination grace period (s); Tide's covers the longest task.",
)
@click.option(
    "--static-replicas",
    type=int,
    default=None,
    help="Size of the static pool (default: peak need).",
)
@click.option(
    "--durations",
    default="lognormal:2:0.5",
    show_default=True,
    help="Duration distribution for per-minute CSVs: fixed:S, exp:MEAN, lognormal:MEAN[:SIGMA].",
)
@click.option("--queue", default=None, help="Only this queue's rows from a CSV trace.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG plots.")
def simulate(
    *,
    trace_specs: tuple[str, ...],
    policies: tuple[str, ...],
    seed: int,
    out: Path,
    startup_delay: float,
    max_wait: float,
    concurrency: int,
    max_replicas: int,
    grace_period: float,
    static_replicas: int | None,
    durations: str,
    queue: str | None,
    no_plot: bool,
) -> None:
    """Compare Tide's scaling policy with KEDA and HPA defaults on workload traces."""
    console = Console()
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and elide the figures.
        console = Console(width=150)
    settings = SimSettings(
        concurrency=concurrency,
        startup_delay=startup_delay,
        max_wait=max_wait,
        max_replicas=max_replicas,
        baseline_grace_period=grace_period,
        static_replicas=static_replicas,
    )
    chosen = list(policies) or list(POLICIES)
    traces = resolve_traces(trace_specs, seed=seed, durations=durations, queue=queue)
    out.mkdir(parents=True, exist_ok=True)
    summaries: list[Summary] = []
    for trace in traces:
        console.print(f"[dim]{trace.name}: {trace.tasks:,} tasks — {trace.description}[/dim]")
        results = run_comparison(trace, chosen, settings=settings)
        summaries.extend(summarize(r) for r in results)
        if not no_plot:
            png = out / f"{trace.name}.png"
            plot_trace(results, png, title=f"{trace.name}: {trace.description}")
            console.print(f"[dim]plot: {png}[/dim]")
    window = tide_config(settings).behavior.scale_down.stabilization_window_seconds
    checks = check_targets(summaries, max_wait=max_wait, window=window)
    render_table(summaries, console=console)
    if checks:
        render_targets(checks, console=console)
    write_json(
        out / "results.json",
        summaries=summaries,
        checks=checks,
        settings={**asdict(replace(settings)), "seed": seed},
    )
    console.print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    simulate()
