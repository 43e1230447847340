"""Figures of merit for simulated runs, the benchmark targets, and their rendering.

``summarize`` reduces a ``SimResult`` to the numbers a reader compares across policies:
waits (p50/p95/p99 and the share over the maximum wait), cost (replica-seconds, utilisation,
and cost against the floor: the trace's own work on fully used replicas, so work thrown away
by an interrupted task counts as cost, never as useful), and stability: scale events,
interrupted tasks and the slot-seconds they wasted, which replicas scale-in took, and flaps
counted two ways. ``reversals`` is every change of direction; ``flaps`` is what a user calls
a flap: a change of direction within ``FLAP_WINDOW`` (300 s, the HPA's default scale-down
stabilisation) of the move it reverses. ``check_targets`` compares
Tide with the baselines of the same run, trace by trace, against the targets of the design
issue, and says by how much each is met or missed. Rendering is separate from computing: a
rich table for the terminal, JSON for machines, and a PNG per trace (matplotlib's Agg
backend, so it works without a display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from tide_operator.simulation.simulator import SimResult

__all__ = [
    "FLAP_WINDOW",
    "Summary",
    "TargetCheck",
    "check_targets",
    "count_flaps",
    "count_reversals",
    "plot_trace",
    "render_table",
    "render_targets",
    "summarize",
    "write_json",
]


#: A reversal within this many seconds of the move it reverses is a flap: the HPA's default
#: scale-down stabilisation window, the span users tune against.
FLAP_WINDOW = 300.0


@dataclass(frozen=True)
class Summary:
    trace: str
    policy: str
    tasks: int
    completed: int
    p50_wait: float
    p95_wait: float
    p99_wait: float
    over_max_wait: float
    replica_seconds: float
    floor_replica_seconds: float
    utilisation: float
    cost_vs_floor: float
    # The clairvoyant whole-replica pool's cost over the same floor: a reference for how
    # much of ``cost_vs_floor`` whole replicas alone explain, not a goal.
    ideal_vs_floor: float
    scale_events: int
    reversals: int
    flaps: int
    interrupted: int
    wasted_slot_seconds: float
    removed_idle: int
    removed_drained: int
    removed_killed: int
    unfinished: int
    duration: float
    wall_seconds: float


@dataclass(frozen=True)
class TargetCheck:
    trace: str
    target: str
    met: bool
    detail: str


def count_reversals(events: Iterable[tuple[float, int, int]]) -> int:
    """Direction changes between consecutive scale events (up then down, or down then up)."""
    reversals = 0
    last = 0
    for _, before, after in events:
        direction = 1 if after > before else -1
        if last and direction != last:
            reversals += 1
        last = direction
    return reversals


def count_flaps(events: Iterable[tuple[float, int, int]], *, window: float = FLAP_WINDOW) -> int:
    """Reversals that come within ``window`` seconds of the move they reverse."""
    flaps = 0
    last_direction, last_at = 0, -math.inf
    for at, before, after in events:
        direction = 1 if after > before else -1
        if last_direction and direction != last_direction and at - last_at < window:
            flaps += 1
        last_direction, last_at = direction, at
    return flaps


def summarize(result: SimResult) -> Summary:
    waits = result.waits[~np.isnan(result.waits)]
    if len(waits):
        p50, p95, p99 = (float(x) for x in np.percentile(waits, [50, 95, 99]))
        over = float(np.mean(waits > result.max_wait))
    else:
        p50 = p95 = p99 = over = 0.0
    floor = result.floor_replica_seconds
    capacity = result.replica_seconds * result.concurrency
    return Summary(
        trace=result.trace,
        policy=result.policy,
        tasks=result.tasks,
        completed=result.completed,
        p50_wait=p50,
        p95_wait=p95,
        p99_wait=p99,
        over_max_wait=over,
        replica_seconds=result.replica_seconds,
        floor_replica_seconds=floor,
        # Useful work only: what interrupted attempts did is paid for but not counted here.
        utilisation=result.work_seconds / capacity if capacity else 0.0,
        cost_vs_floor=result.replica_seconds / floor if floor else math.inf,
        ideal_vs_floor=result.ideal_replica_seconds / floor if floor else math.inf,
        scale_events=len(result.scale_events),
        reversals=count_reversals(result.scale_events),
        flaps=count_flaps(result.scale_events),
        interrupted=result.interrupted,
        wasted_slot_seconds=result.wasted_slot_seconds,
        removed_idle=result.removed_idle,
        removed_drained=result.removed_drained,
        removed_killed=result.removed_killed,
        unfinished=result.tasks - result.completed,
        duration=result.end_time,
        wall_seconds=result.wall_seconds,
    )


#: Traces with a day's shape (a ramp that repeats or a slow ramp): the cost-floor goal.
DIURNAL_TRACES = frozenset({"diurnal", "diurnal-mix", "slow-ramp-cliff"})
COST_FLOOR_GOAL = 1.25


def check_targets(
    summaries: Sequence[Summary],
    *,
    max_wait: float,
    policy: str = "tide",
) -> list[TargetCheck]:
    """The issue's goals for ``policy`` against the baselines of the same run.

    On every trace: no interrupted or unfinished task, and ahead of both KEDA settings on cost
    (replica-seconds) and on p95 wait (or within the maximum wait when a KEDA setting is too,
    a tie below the target being no loss to the user). On the diurnal-type traces: cost within
    ``COST_FLOOR_GOAL`` times the floor and p95 wait within the target.
    """
    checks: list[TargetCheck] = []
    by_trace: dict[str, dict[str, Summary]] = {}
    for s in summaries:
        by_trace.setdefault(s.trace, {})[s.policy] = s
    for trace, runs in by_trace.items():
        tide = runs.get(policy)
        if tide is None:
            continue

        def add(target: str, met: bool, detail: str, trace: str = trace) -> None:
            checks.append(TargetCheck(trace, target, met, detail))

        for name in ("keda-default", "keda-tuned"):
            other = runs.get(name)
            if other is None:
                continue
            add(
                f"replica-s < {name}",
                tide.replica_seconds < other.replica_seconds,
                f"{tide.replica_seconds:,.0f} vs {other.replica_seconds:,.0f} "
                f"({tide.replica_seconds / other.replica_seconds:.2f})",
            )
            add(
                f"p95 wait <= {name}",
                tide.p95_wait <= other.p95_wait,
                f"{tide.p95_wait:.2f}s vs {other.p95_wait:.2f}s",
            )
        add(
            "no interrupted tasks",
            tide.interrupted == 0 and tide.unfinished == 0,
            f"{tide.interrupted} interrupted, {tide.unfinished} unfinished",
        )
        base = trace.split("@")[0]
        if base in DIURNAL_TRACES:
            add(
                f"cost <= {COST_FLOOR_GOAL}x floor",
                tide.cost_vs_floor <= COST_FLOOR_GOAL,
                f"{tide.cost_vs_floor:.3f}x",
            )
            add(
                "p95 wait <= max wait",
                tide.p95_wait <= max_wait,
                f"{tide.p95_wait:.1f}s vs {max_wait:.0f}s",
            )
    return checks


def render_table(summaries: Sequence[Summary], *, console: Console, title: str = "") -> None:
    table = Table(title=title or "Simulated autoscaling", show_lines=False)
    for header in (
        "trace",
        "policy",
        "p50 s",
        "p95 s",
        "p99 s",
        ">max wait",
        "replica-s",
        "floor",
        "cost/floor",
        "ideal/floor",
        "events",
        "flaps 300s",
        "reversals",
        "interrupted",
        "removed idle/drained/killed",
        "unfinished",
        "vs keda-d",
        "vs keda-t",
    ):
        table.add_column(header, justify="left" if header in ("trace", "policy") else "right")
    previous = None
    cost: dict[tuple[str, str], float] = {(s.trace, s.policy): s.replica_seconds for s in summaries}
    for s in summaries:
        if previous is not None and s.trace != previous:
            table.add_section()
        previous = s.trace
        style = "bold cyan" if s.policy == "tide" else None

        def ratio(baseline: str, s: Summary = s) -> str:
            other = cost.get((s.trace, baseline))
            return f"{s.replica_seconds / other:.2f}" if other else "-"

        table.add_row(
            s.trace,
            s.policy,
            f"{s.p50_wait:.2f}",
            f"{s.p95_wait:.2f}",
            f"{s.p99_wait:.2f}",
            f"{s.over_max_wait:.1%}",
            f"{s.replica_seconds:,.0f}",
            f"{s.floor_replica_seconds:,.0f}",
            f"{s.cost_vs_floor:.3f}",
            f"{s.ideal_vs_floor:.3f}",
            str(s.scale_events),
            str(s.flaps),
            str(s.reversals),
            str(s.interrupted),
            f"{s.removed_idle}/{s.removed_drained}/{s.removed_killed}",
            str(s.unfinished),
            ratio("keda-default"),
            ratio("keda-tuned"),
            style=style,
        )
    console.print(table)


def render_targets(checks: Sequence[TargetCheck], *, console: Console) -> None:
    table = Table(title="Targets (tide vs baselines, same run)")
    for header in ("trace", "target", "met", "figures"):
        table.add_column(header)
    for c in checks:
        table.add_row(c.trace, c.target, "yes" if c.met else "[red]NO[/red]", c.detail)
    console.print(table)


def write_json(
    path: Path,
    *,
    summaries: Sequence[Summary],
    checks: Sequence[TargetCheck] = (),
    settings: dict[str, Any] | None = None,
) -> None:
    payload = {
        "settings": settings or {},
        "results": [asdict(s) for s in summaries],
        "targets": [asdict(c) for c in checks],
    }
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")


def _binned_p95(
    arrivals: npt.NDArray[np.float64], waits: npt.NDArray[np.float64], *, bin_seconds: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """p95 wait of the tasks arriving in each bin; NaN where none arrived (a gap in the line)."""
    ok = ~np.isnan(waits)
    arrivals, waits = arrivals[ok], waits[ok]
    if not len(arrivals):
        return np.zeros(0), np.zeros(0)
    bins = np.floor(arrivals / bin_seconds).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    bins, waits = bins[order], waits[order]
    edges = np.flatnonzero(np.diff(bins)) + 1
    starts = bins[np.concatenate(([0], edges))]
    p95 = np.full(int(bins[-1]) + 1, np.nan)
    p95[starts] = [np.percentile(g, 95) for g in np.split(waits, edges)]
    return np.arange(len(p95), dtype=np.float64) * bin_seconds, p95


def plot_trace(results: Sequence[SimResult], path: Path, *, title: str = "") -> None:
    """One row per policy: waiting tasks, replicas, and p95 wait by arrival time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    fig, axes = plt.subplots(rows, 3, figsize=(13, 1.9 * rows + 0.8), sharex=True, squeeze=False)
    horizon = max((r.end_time for r in results), default=1.0)
    unit, scale = ("h", 3600.0) if horizon > 3 * 3600 else ("min", 60.0)
    bin_seconds = max(60.0, horizon / 300)
    ymax_queue = max((float(r.series_waiting.max(initial=0)) for r in results), default=1.0)
    ymax_replicas = max((float(r.series_replicas.max(initial=0)) for r in results), default=1.0)
    for row, r in zip(axes, results, strict=True):
        t = r.series_t / scale
        row[0].fill_between(t, r.series_waiting, step="post", color="tab:orange", alpha=0.6)
        row[0].set_ylim(0, max(1.0, ymax_queue) * 1.05)
        row[0].set_ylabel(r.policy, fontsize=10, fontweight="bold")
        row[1].step(t, r.series_replicas, where="post", color="tab:blue", lw=1)
        row[1].plot(t, r.series_inflight / r.concurrency, color="tab:gray", lw=0.6, alpha=0.8)
        row[1].set_ylim(0, max(1.0, ymax_replicas) * 1.05)
        at, p95 = _binned_p95(r.arrivals, r.waits, bin_seconds=bin_seconds)
        # Markers too: a short burst fills a single bin, which a line alone would not show.
        row[2].plot(at / scale, p95, color="tab:red", lw=1, marker=".", ms=4)
        row[2].axhline(r.max_wait, color="black", lw=0.6, ls="--")
        row[2].set_ylim(bottom=0)
    axes[0][0].set_title("waiting tasks")
    axes[0][1].set_title("replicas (blue), busy slots / concurrency (grey)")
    axes[0][2].set_title("p95 wait by arrival (s); dashed: max wait")
    for ax in axes[-1]:
        ax.set_xlabel(f"time ({unit})")
    fig.suptitle(title or (results[0].trace if results else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
