"""A pool's recorded history, from the places it is kept, turned into a trace to replay.

``tide recommend`` replays what a pool lived through. People keep that in three forms, and
each is read here into one ``QueueHistory`` (times and the Contract 1 figures summed over the
pool's queues) or straight into a ``Trace``:

* a per-task or per-minute CSV (``traces.load_trace``);
* Prometheus: a range query (``/api/v1/query_range``) of the pool's ``celery_queue_*``
  series over HTTP, summed over the queues the pool consumes;
* the exporter's recorded figures: a CSV with a time column and the figures' names as the
  exporter exports them (``celery_queue_length``, ``celery_queue_inflight``,
  ``celery_queue_completed_total``) or short (``waiting``, ``inflight``, ``completed``),
  one row per scrape, optionally one per queue (``queue_name``).

From figures to tasks: between two samples, the tasks that arrived are the completions plus
what the queue and the slots gained (conservation, as the policy's rate model counts them);
they are spread evenly over the interval. Their durations follow Little's law on the same
interval (mean in-flight over completion rate), drawn from an exponential distribution of
that mean, the assumption with the least information in it. The counter must be monotonic:
a reset (an exporter restart) restarts the counting instead of producing negative work.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from tide_contract.series import QUEUE_COMPLETED as COMPLETED
from tide_contract.series import QUEUE_INFLIGHT as INFLIGHT
from tide_contract.series import QUEUE_LABEL
from tide_contract.series import QUEUE_LENGTH as LENGTH
from tide_operator.adapters.sources import queue_regex
from tide_operator.simulation.traces import Trace, TraceFormatError, seeded_rng

__all__ = [
    "QueueHistory",
    "history_from_prometheus",
    "load_figures",
    "trace_from_history",
]

FloatArray = npt.NDArray[np.float64]

_TIME_COLUMNS = ("at", "time", "timestamp", "t")
_COLUMNS = {
    "waiting": (LENGTH, "waiting", "length"),
    "inflight": (INFLIGHT, "inflight"),
    "completed": (COMPLETED, "completed", "completed_total"),
}


@dataclass(frozen=True)
class QueueHistory:
    """Samples of a pool's queues, summed over them, at ascending times (seconds)."""

    name: str
    at: FloatArray
    waiting: FloatArray
    inflight: FloatArray
    completed: FloatArray

    def __post_init__(self) -> None:
        if len(self.at) < 2:
            raise TraceFormatError(
                f"{self.name}: need at least two samples of the queue figures, got {len(self.at)}"
            )


def history_from_prometheus(
    url: str,
    *,
    queues: Sequence[str],
    start: float,
    end: float,
    step: float = 15.0,
    timeout: float = 30.0,
    client: httpx.Client | None = None,
) -> QueueHistory:
    """Range-query the pool's series from Prometheus, summed over ``queues``.

    Raises ``TraceFormatError`` with one line when Prometheus cannot answer or has no data.
    """
    selector = f'{{{QUEUE_LABEL}=~"{queue_regex(queues)}"}}'
    owned = client is None
    http = client or httpx.Client(timeout=timeout)
    series: dict[str, dict[float, float]] = {}
    try:
        for name in (LENGTH, INFLIGHT, COMPLETED):
            query = f"sum({name}{selector})"
            try:
                response = http.get(
                    f"{url.rstrip('/')}/api/v1/query_range",
                    params={"query": query, "start": start, "end": end, "step": step},
                )
            except httpx.HTTPError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TraceFormatError(f"{url}: range query {query!r} failed: {reason}") from None
            try:
                body = response.json()
            except ValueError:
                body = {}
            if response.status_code != 200 or body.get("status") != "success":
                # Prometheus explains itself in "error"; anything else gets its status code.
                reason = body.get("error") or f"HTTP {response.status_code}"
                raise TraceFormatError(f"{url}: range query {query!r} failed: {reason}")
            result = body["data"]["result"]
            if not result:
                raise TraceFormatError(
                    f"{url}: no samples of {name} for queues {', '.join(queues)} between "
                    f"{start:.0f} and {end:.0f}"
                )
            series[name] = {float(t): float(v) for t, v in result[0]["values"]}
    finally:
        if owned:
            http.close()
    # Keep the instants every series has (a figure a source cannot give is absent, not 0).
    times = sorted(set(series[LENGTH]) & set(series[INFLIGHT]) & set(series[COMPLETED]))
    at = np.array(times, dtype=np.float64)
    return QueueHistory(
        name="prometheus",
        at=at,
        waiting=np.array([series[LENGTH][t] for t in times]),
        inflight=np.array([series[INFLIGHT][t] for t in times]),
        completed=np.array([series[COMPLETED][t] for t in times]),
    )


def load_figures(path: str | Path, *, queues: Sequence[str] | None = None) -> QueueHistory:
    """The exporter's recorded figures from a CSV (see the module docstring)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or []) if h is not None]
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceFormatError(f"{path}: cannot read the file: {exc}") from None
    lowered = {h.lower(): h for h in header}
    time_column = next((lowered[c] for c in _TIME_COLUMNS if c in lowered), None)
    picked = {
        key: next((lowered[c] for c in names if c in lowered), None)
        for key, names in _COLUMNS.items()
    }
    if time_column is None or None in picked.values():
        raise TraceFormatError(
            f"{path}: found columns [{', '.join(header) or 'no header'}]; expected at, "
            f"{LENGTH} (or waiting), {INFLIGHT} (or inflight), {COMPLETED} (or completed)"
            f"[, {QUEUE_LABEL}]"
        )
    queue_column = lowered.get(QUEUE_LABEL) or lowered.get("queue")
    totals: dict[float, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        if queues and queue_column is not None and row.get(queue_column) not in queues:
            continue
        try:
            t = float(row[time_column] or "")
            values = [
                float(row[picked[k] or ""] or "") for k in ("waiting", "inflight", "completed")
            ]
        except ValueError:
            raise TraceFormatError(f"{path}: line {line}: a figure is not a number") from None
        sums = totals.setdefault(t, [0.0, 0.0, 0.0])
        for i, value in enumerate(values):
            sums[i] += value
    times = sorted(totals)
    return QueueHistory(
        name=path.stem,
        at=np.array(times, dtype=np.float64),
        waiting=np.array([totals[t][0] for t in times]),
        inflight=np.array([totals[t][1] for t in times]),
        completed=np.array([totals[t][2] for t in times]),
    )


def trace_from_history(history: QueueHistory, *, seed: int = 0) -> Trace:
    """Tasks consistent with the figures: arrivals by conservation, durations by Little."""
    rng = seeded_rng(seed, history.name)
    at = history.at - history.at[0]
    done = np.diff(history.completed)
    # A counter that went down was reset: count from the new value instead.
    done = np.where(done < 0, history.completed[1:], done)
    present = history.waiting + history.inflight
    arrived = np.maximum(0.0, done + np.diff(present))
    spans = np.diff(at)
    # The first sample's own backlog arrived at the start.
    counts = np.concatenate(([present[0]], arrived))
    rate = np.where(spans > 0, done / np.where(spans > 0, spans, 1.0), 0.0)
    mean_inflight = (history.inflight[1:] + history.inflight[:-1]) / 2
    # Little's law per interval; where nothing completed, the last interval that said.
    service = np.where(rate > 0, mean_inflight / np.where(rate > 0, rate, 1.0), np.nan)
    known = service[np.isfinite(service) & (service > 0)]
    fallback = float(np.median(known)) if len(known) else 1.0
    filled = []
    last = fallback
    for value in service:
        if np.isfinite(value) and value > 0:
            last = float(value)
        filled.append(last)
    means = np.array([filled[0], *filled])
    whole = np.floor(counts).astype(np.int64)
    # Fractions of a task (rates averaged by Prometheus) are kept in expectation.
    whole += (rng.random(len(counts)) < counts - whole).astype(np.int64)
    starts = np.concatenate(([0.0], at[:-1]))
    widths = np.concatenate(([0.0], spans))
    index = np.repeat(np.arange(len(counts)), whole)
    arrivals = starts[index] + widths[index] * rng.random(len(index))
    durations = np.maximum(rng.exponential(means[index]), 1e-3)
    order = np.argsort(arrivals, kind="stable")
    horizon = float(at[-1]) if len(at) else 1.0
    return Trace(
        history.name,
        arrivals[order],
        durations[order],
        max(horizon, 1.0),
        f"rebuilt from {len(at)} samples of the queue figures",
    )
