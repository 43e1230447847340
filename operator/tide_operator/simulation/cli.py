"""``tide simulate``: replay workload traces through Tide's policy and the baselines.

The command is the thin edge around the pure parts: it resolves trace names or CSV paths
(``traces``), builds one fresh controller per run (``baselines``), replays (``simulator``),
and renders (``report``): a table and the targets in the terminal, ``results.json`` and one
PNG per trace in ``--out``. A newcomer runs ``tide simulate`` and gets the ``bursts`` trace
compared across every policy, with the plot written to ``./tide-simulation/``.

``tide recommend`` (``recommend_command``) is the edge of ``recommend``: it reads a pool's
history (a CSV, the exporter's recorded figures, or a Prometheus range query), searches the
WorkerPool's settings by replaying the history, and prints the cheapest that meets a p95 wait.
Bad input ends in one line on stderr and exit status 2.

Standalone: ``python -m tide_operator.simulation.cli --trace spike``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console

from tide_operator.resources.spec import WorkerPoolSpec
from tide_operator.simulation.baselines import (
    EXTRA_POLICIES,
    POLICIES,
    make_controller,
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
from tide_operator.simulation.simulator import DEFAULT_GRACE_PERIOD, SimResult, SimSettings
from tide_operator.simulation.simulator import simulate as replay
from tide_operator.simulation.traces import (
    Trace,
    TraceFormatError,
    builtin_trace,
    load_trace,
    trace_names,
)

__all__ = ["BadTrace", "recommend_command", "resolve_traces", "run_comparison", "simulate"]


class BadTrace(click.ClickException):
    """A trace that cannot be used: one line on stderr, exit status 2 (a usage error)."""

    exit_code = 2


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
            try:
                traces.append(load_trace(spec, seed=seed, durations=durations, queue=queue))
            except TraceFormatError as exc:
                raise BadTrace(str(exc)) from None
        else:
            raise BadTrace(
                f"--trace {spec!r} is neither a built-in trace ({', '.join(trace_names())}, "
                "all) nor a CSV file"
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
    default=DEFAULT_GRACE_PERIOD,
    show_default=True,
    help="Workers' termination grace period (s), for every policy; default the WorkerPool's. "
    "Tasks still running when it ends are interrupted.",
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
    if not no_plot and importlib.util.find_spec("matplotlib") is None:
        # Plots are an extra (Tide's image has no use for them): say so before running.
        raise click.UsageError(
            "the plots need matplotlib: pip install 'tide-platform[plots]', or pass --no-plot"
        )
    console = Console()
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and elide the figures.
        console = Console(width=150)
    settings = SimSettings(
        concurrency=concurrency,
        startup_delay=startup_delay,
        max_wait=max_wait,
        max_replicas=max_replicas,
        grace_period=grace_period,
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
    checks = check_targets(summaries, max_wait=max_wait)
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


# ------------------------------------------------------------------------ tide recommend


def _current_spec(
    *,
    pool: Path | None,
    queues: tuple[str, ...],
    deployment: str,
    concurrency: int | None,
    metrics_url: str | None,
) -> tuple[dict[str, Any], str, str | None]:
    """(spec, name, namespace) of the pool as it is now, from a file or from the options."""
    if pool is not None:
        try:
            body = yaml.safe_load(pool.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise BadTrace(f"{pool}: cannot read the WorkerPool: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise BadTrace(f"{pool}: not a WorkerPool (no spec)")
        spec = dict(body["spec"])
        if concurrency is not None:
            spec["concurrency"] = concurrency
        meta = body.get("metadata") or {}
        return spec, str(meta.get("name", "workers")), meta.get("namespace")
    if not queues:
        raise BadTrace("give the pool as --pool FILE, or its queues with --queue NAME")
    url = metrics_url or "http://tide-exporter:9808/metrics"
    metrics = (
        {"exporter": {"url": url}}
        if url.rstrip("/").endswith("/metrics")
        else {"prometheus": {"url": url}}
    )
    spec = {
        "queues": list(queues),
        "concurrency": concurrency or 1,
        "scaleTargetRef": {"name": deployment},
        "metrics": metrics,
    }
    return spec, deployment, None


@click.command("recommend")
@click.option("--p95", "target_p95", type=float, required=True, help="p95 wait to meet (s).")
@click.option(
    "--trace", "trace_path", type=click.Path(path_type=Path), help="Per-task or per-minute CSV."
)
@click.option(
    "--figures",
    type=click.Path(path_type=Path),
    help="The exporter's recorded figures (CSV: at, celery_queue_length, "
    "celery_queue_inflight, celery_queue_completed_total[, queue_name]).",
)
@click.option(
    "--prometheus", help="Prometheus base URL: range-query the pool's celery_queue_* series."
)
@click.option("--since", default=86400.0, show_default=True, help="Seconds of history to query.")
@click.option("--end", type=float, default=None, help="End of the query (Unix time; default now).")
@click.option("--step", default=15.0, show_default=True, help="Range query step (s).")
@click.option(
    "--pool",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The current WorkerPool YAML.",
)
@click.option("--queue", "queues", multiple=True, help="Queue the pool consumes (without --pool).")
@click.option(
    "--deployment",
    default="celery-worker",
    show_default=True,
    help="Deployment to scale (without --pool).",
)
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Slots per worker now (default: the pool's, or 1).",
)
@click.option(
    "--metrics-url", default=None, help="Metrics URL for the generated pool (without --pool)."
)
@click.option(
    "--startup-delay", default=20.0, show_default=True, help="Seconds until a new worker serves."
)
@click.option(
    "--durations",
    default="lognormal:2:0.5",
    show_default=True,
    help="Durations for per-minute CSVs.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the YAML here too.",
)
def recommend_command(
    *,
    target_p95: float,
    trace_path: Path | None,
    figures: Path | None,
    prometheus: str | None,
    since: float,
    end: float | None,
    step: float,
    pool: Path | None,
    queues: tuple[str, ...],
    deployment: str,
    concurrency: int | None,
    metrics_url: str | None,
    startup_delay: float,
    durations: str,
    seed: int,
    out: Path | None,
) -> None:
    """Recommend WorkerPool settings from a pool's history, replayed through the simulator.

    Searches targets, windows, cooldown, min/max and concurrency for the cheapest settings
    whose replayed p95 wait meets --p95, and prints a ready-to-apply WorkerPool with the
    predicted cost and waits beside the current settings' and KEDA's defaults'.
    """
    from tide_operator.simulation.history import (
        history_from_prometheus,
        load_figures,
        trace_from_history,
    )
    from tide_operator.simulation.recommend import recommend, render_workerpool

    sources = [s for s in (trace_path, figures, prometheus) if s is not None]
    if len(sources) != 1:
        raise BadTrace("give exactly one history: --trace CSV, --figures CSV or --prometheus URL")
    spec, name, namespace = _current_spec(
        pool=pool,
        queues=queues,
        deployment=deployment,
        concurrency=concurrency,
        metrics_url=metrics_url or prometheus,
    )
    try:
        WorkerPoolSpec.model_validate(spec)
    except ValueError as exc:
        raise BadTrace(f"the current WorkerPool is not valid: {_first_error(exc)}") from None
    pool_queues = tuple(spec.get("queues") or queues)
    try:
        if trace_path is not None:
            trace = load_trace(trace_path, seed=seed, durations=durations)
        elif figures is not None:
            trace = trace_from_history(load_figures(figures, queues=pool_queues), seed=seed)
        else:
            assert prometheus is not None
            stop = end if end is not None else time.time()
            history = history_from_prometheus(
                prometheus, queues=pool_queues, start=stop - since, end=stop, step=step
            )
            trace = trace_from_history(history, seed=seed)
    except TraceFormatError as exc:
        raise BadTrace(str(exc)) from None
    settings = SimSettings(startup_delay=startup_delay, max_wait=target_p95)
    err = Console(stderr=True)
    err.print(
        f"[dim]{trace.name}: {trace.tasks:,} tasks over {trace.horizon / 3600:.1f} h; "
        f"searching for p95 <= {target_p95:g}s[/dim]"
    )
    result = recommend(
        trace,
        spec,
        target_p95=target_p95,
        settings=settings,
        progress=lambda line: err.print(f"[dim]{line}[/dim]"),
    )
    text = render_workerpool(result, name=name, namespace=namespace, trace=trace)
    click.echo(text, nl=False)
    if out is not None:
        out.write_text(text)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc).splitlines()[0]
