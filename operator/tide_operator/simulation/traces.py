"""Workload traces for the simulator: when tasks arrive and how long each one runs.

A ``Trace`` is two sorted-by-arrival numpy arrays (arrival time and service duration, in
seconds) plus the horizon it covers. Everything is generated with numpy in whole arrays, never
task by task, so a 24-hour trace of a million tasks is built in well under a second.

Built-in shapes model what Celery pools see in practice: a steady stream, a day/night cycle,
a spike onto an idle pool, on/off bursts, an hourly batch fan-out, heavy-tailed durations,
long tasks mixed with short ones, and a steady stream with minute-to-minute noise. Each is a
function of a seed only; the same seed yields the same arrays on every machine (numpy's
``Generator`` with PCG64 is stable across platforms), and each shape derives its own stream
from the seed and its name so that adding a shape does not change the others.

Files load through ``load_trace``: a per-task CSV replays exactly, with the header spellings
people have (``arrival``/``arrival_s``/``timestamp`` in seconds or ISO 8601,
``duration``/``duration_s``/``runtime``, optional ``queue``); a per-minute counts CSV
(``minute,count[,queue]``) spreads each minute's count uniformly over the minute and draws
durations from a named distribution. A file in neither form raises ``TraceFormatError``, a
one-line message naming the columns found and the ones expected.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUILTIN_TRACES",
    "UNSEEN_TRACES",
    "Trace",
    "TraceFormatError",
    "builtin_trace",
    "durations_from_spec",
    "load_trace",
    "seeded_rng",
    "trace_names",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Trace:
    """Tasks of one pool: ``arrivals`` sorted ascending, ``durations`` aligned with them."""

    name: str
    arrivals: FloatArray
    durations: FloatArray
    horizon: float
    description: str = ""

    def __post_init__(self) -> None:
        if self.arrivals.shape != self.durations.shape:
            raise ValueError("arrivals and durations must have the same length")
        if len(self.arrivals) and np.any(np.diff(self.arrivals) < 0):
            raise ValueError("arrivals must be sorted")
        if len(self.durations) and float(self.durations.min()) <= 0:
            raise ValueError("durations must be positive")

    @property
    def tasks(self) -> int:
        return len(self.arrivals)

    def offered_slots(self) -> float:
        """Mean number of busy slots the trace needs (total work / horizon)."""
        return float(self.durations.sum()) / self.horizon if self.horizon else 0.0

    def peak_slots(self, *, window: float = 60.0) -> float:
        """Busiest window's work per second: the slots a pool sized for peak would need."""
        if not self.tasks:
            return 0.0
        bins = np.floor(self.arrivals / window).astype(np.int64)
        work = np.bincount(bins, weights=self.durations)
        return float(work.max()) / window


def seeded_rng(seed: int, name: str) -> np.random.Generator:
    """A generator of its own for ``name``, the same on every machine for one seed."""
    # crc32 rather than hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


_rng = seeded_rng


def _poisson_arrivals(rng: np.random.Generator, rate_per_second: FloatArray) -> FloatArray:
    """Non-homogeneous Poisson arrivals from a per-second rate, vectorised per second."""
    counts = rng.poisson(rate_per_second)
    seconds = np.repeat(np.arange(len(rate_per_second), dtype=np.float64), counts)
    return np.sort(seconds + rng.random(len(seconds)))


def _lognormal(rng: np.random.Generator, n: int, *, mean: float, sigma: float) -> FloatArray:
    # Parameterised by the mean so that shapes state the load they offer.
    mu = np.log(mean) - sigma**2 / 2
    return np.asarray(rng.lognormal(mu, sigma, n), dtype=np.float64)


def steady(seed: int, *, hours: float = 2.0, rate: float = 20.0) -> Trace:
    rng = _rng(seed, "steady")
    arrivals = _poisson_arrivals(rng, np.full(int(hours * 3600), rate))
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.5)
    return Trace("steady", arrivals, durations, hours * 3600, f"Poisson {rate}/s, ~2 s tasks")


def diurnal(seed: int, *, hours: float = 24.0, mean_rate: float = 6.0) -> Trace:
    rng = _rng(seed, "diurnal")
    t = np.arange(int(hours * 3600), dtype=np.float64)
    # Night at 10% of the day's peak, peak mid-afternoon: a raised cosine over 24 h.
    shape = 0.1 + 0.9 * (1 - np.cos(2 * np.pi * (t / 86400.0))) / 2
    rate = mean_rate * shape / shape.mean()
    arrivals = _poisson_arrivals(rng, rate)
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.6)
    return Trace(
        "diurnal", arrivals, durations, hours * 3600, f"day/night cycle, mean {mean_rate}/s"
    )


def spike(seed: int) -> Trace:
    rng = _rng(seed, "spike")
    # An idle pool receives 3000 tasks within 30 s at minute 5, then nothing.
    arrivals = np.sort(300.0 + 30.0 * rng.random(3000))
    durations = _lognormal(rng, len(arrivals), mean=3.0, sigma=0.5)
    return Trace("spike", arrivals, durations, 1800.0, "3000 tasks in 30 s onto an idle pool")


def bursts(seed: int) -> Trace:
    rng = _rng(seed, "bursts")
    t = np.arange(2 * 3600)
    # Five minutes on at 15/s, ten minutes off: each burst starts from a sleeping pool.
    rate = np.where((t % 900) < 300, 15.0, 0.0)
    arrivals = _poisson_arrivals(rng, rate)
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.5)
    return Trace("bursts", arrivals, durations, 7200.0, "5 min on at 15/s, 10 min off")


def hourly_batch(seed: int) -> Trace:
    rng = _rng(seed, "hourly-batch")
    # A cron fan-out of 5000 one-second tasks at the top of every hour, over a trickle.
    batches = np.concatenate([h * 3600.0 + 10.0 * rng.random(5000) for h in range(6)])
    background = _poisson_arrivals(rng, np.full(6 * 3600, 0.2))
    arrivals = np.sort(np.concatenate([batches, background]))
    durations = _lognormal(rng, len(arrivals), mean=1.0, sigma=0.3)
    return Trace("hourly-batch", arrivals, durations, 6 * 3600.0, "5000 tasks every hour")


def heavy_tailed(seed: int) -> Trace:
    rng = _rng(seed, "heavy-tailed")
    arrivals = _poisson_arrivals(rng, np.full(2 * 3600, 5.0))
    # Pareto with alpha = 1.5: finite mean (1.5 s), infinite variance; capped at 10 minutes.
    durations = np.minimum(0.5 * (1 + rng.pareto(1.5, len(arrivals))), 600.0)
    return Trace("heavy-tailed", arrivals, durations, 7200.0, "Pareto alpha=1.5 durations")


def long_short(seed: int) -> Trace:
    rng = _rng(seed, "long-short")
    short = _poisson_arrivals(rng, np.full(2 * 3600, 8.0))
    long = _poisson_arrivals(rng, np.full(2 * 3600, 1 / 60))
    arrivals = np.concatenate([short, long])
    durations = np.concatenate(
        [_lognormal(rng, len(short), mean=1.0, sigma=0.4), 300.0 + 600.0 * rng.random(len(long))]
    )
    order = np.argsort(arrivals, kind="stable")
    return Trace(
        "long-short",
        arrivals[order],
        durations[order],
        7200.0,
        "8/s of ~1 s tasks plus 1/min of 5-15 min tasks",
    )


def noisy(seed: int) -> Trace:
    rng = _rng(seed, "noisy")
    minutes = 2 * 60
    # The rate itself wanders minute to minute (±30%), on top of Poisson noise.
    per_minute = 10.0 * rng.lognormal(-0.045, 0.3, minutes)
    arrivals = _poisson_arrivals(rng, np.repeat(per_minute, 60))
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.5)
    return Trace("noisy", arrivals, durations, 7200.0, "10/s with ±30% per-minute noise")


def tiny_flood(seed: int) -> Trace:
    rng = _rng(seed, "tiny-flood")
    t = np.arange(2 * 3600)
    # Floods of ~10 ms tasks: two minutes at 400/s every ten minutes, over 2/s between them.
    rate = np.where((t % 600) < 120, 400.0, 2.0)
    arrivals = _poisson_arrivals(rng, rate)
    durations = _lognormal(rng, len(arrivals), mean=0.01, sigma=0.5)
    return Trace("tiny-flood", arrivals, durations, 7200.0, "floods of ~10 ms tasks, 400/s")


def long_tasks(seed: int) -> Trace:
    rng = _rng(seed, "long-tasks")
    # A handful of eight-minute tasks (a report, an export) over two hours, nothing else.
    n = 12
    arrivals = np.sort(rng.random(n) * 6000.0)
    durations = 480.0 + 30.0 * rng.standard_normal(n)
    return Trace("long-tasks", arrivals, durations, 7200.0, "12 tasks of ~8 min")


def retry_echoes(seed: int) -> Trace:
    rng = _rng(seed, "retry-echoes")
    # A burst of 2000 calls to a failing service at minute 5; 40% fail and retry with
    # Celery's exponential backoff (60, 120, 240, 480 s), each echo smaller and more spread.
    parts = [300.0 + 20.0 * rng.random(2000)]
    size, delay = 2000, 60.0
    for _ in range(4):
        size = int(size * 0.4)
        parts.append(300.0 + delay + 20.0 + delay * 0.25 * rng.random(size))
        delay *= 2
    background = _poisson_arrivals(rng, np.full(3600, 0.5))
    arrivals = np.sort(np.concatenate([*parts, background]))
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.5)
    return Trace("retry-echoes", arrivals, durations, 3600.0, "a burst and its retry echoes")


def slow_ramp_cliff(seed: int) -> Trace:
    rng = _rng(seed, "slow-ramp-cliff")
    t = np.arange(5 * 3600, dtype=np.float64)
    # Three hours of ramp from 0.5/s to 15/s, a cliff back to 0.5/s, two quiet hours.
    rate = np.where(t < 3 * 3600, 0.5 + 14.5 * t / (3 * 3600), 0.5)
    arrivals = _poisson_arrivals(rng, rate)
    durations = _lognormal(rng, len(arrivals), mean=2.0, sigma=0.5)
    return Trace("slow-ramp-cliff", arrivals, durations, 5 * 3600.0, "3 h ramp to 15/s, cliff")


def diurnal_mix(seed: int) -> Trace:
    rng = _rng(seed, "diurnal-mix")
    hours = 48
    t = np.arange(hours * 3600, dtype=np.float64)
    # Two days of a day/night cycle (night at 10% of the peak) with a heavy-tailed task mix:
    # most tasks ~1 s, some ~20 s, and a Pareto tail capped at four minutes.
    shape = 0.1 + 0.9 * (1 - np.cos(2 * np.pi * t / 86400.0)) / 2
    rate = 4.0 * shape / shape.mean()
    arrivals = _poisson_arrivals(rng, rate)
    n = len(arrivals)
    kind = rng.random(n)
    durations = np.where(
        kind < 0.9,
        _lognormal(rng, n, mean=1.0, sigma=0.5),
        np.where(
            kind < 0.99,
            _lognormal(rng, n, mean=20.0, sigma=0.5),
            np.minimum(10.0 * (1 + rng.pareto(1.2, n)), 240.0),
        ),
    )
    return Trace(
        "diurnal-mix", arrivals, durations, hours * 3600.0, "2 days, heavy-tailed task mix"
    )


BUILTIN_TRACES: dict[str, Callable[[int], Trace]] = {
    "steady": steady,
    "diurnal": diurnal,
    "spike": spike,
    "bursts": bursts,
    "hourly-batch": hourly_batch,
    "heavy-tailed": heavy_tailed,
    "long-short": long_short,
    "noisy": noisy,
    "tiny-flood": tiny_flood,
    "long-tasks": long_tasks,
    "retry-echoes": retry_echoes,
    "slow-ramp-cliff": slow_ramp_cliff,
    "diurnal-mix": diurnal_mix,
}

#: Shapes added after the policy was tuned on the others; the benchmark replays them with
#: seeds that were never used while tuning.
UNSEEN_TRACES: tuple[str, ...] = (
    "tiny-flood",
    "long-tasks",
    "retry-echoes",
    "slow-ramp-cliff",
    "diurnal-mix",
)


def trace_names() -> list[str]:
    return list(BUILTIN_TRACES)


def builtin_trace(name: str, *, seed: int = 0) -> Trace:
    try:
        factory = BUILTIN_TRACES[name]
    except KeyError:
        raise ValueError(
            f"unknown trace {name!r}; built-in traces: {', '.join(BUILTIN_TRACES)}"
        ) from None
    return factory(seed)


def durations_from_spec(spec: str, *, n: int, rng: np.random.Generator) -> FloatArray:
    """Durations per ``fixed:S``, ``exp:MEAN``, ``lognormal:MEAN[:SIGMA]`` or ``pareto:X:A``."""
    kind, _, rest = spec.partition(":")
    args = [float(a) for a in rest.split(":") if a]
    try:
        if kind == "fixed":
            return np.full(n, args[0])
        if kind == "exp":
            return np.asarray(rng.exponential(args[0], n), dtype=np.float64)
        if kind == "lognormal":
            return _lognormal(rng, n, mean=args[0], sigma=args[1] if len(args) > 1 else 0.5)
        if kind == "pareto":
            return np.asarray(args[0] * (1 + rng.pareto(args[1], n)), dtype=np.float64)
    except IndexError:
        pass
    raise ValueError(
        f"bad duration distribution {spec!r}; use fixed:S, exp:MEAN, lognormal:MEAN[:SIGMA] "
        "or pareto:SCALE:ALPHA"
    )


#: Header spellings accepted for each column of a per-task CSV, in order of preference.
ARRIVAL_COLUMNS: tuple[str, ...] = (
    "arrival",
    "arrival_s",
    "timestamp",
    "arrival_time",
    "arrived_at",
    "time",
    "ts",
    "enqueued_at",
    "published_at",
)
DURATION_COLUMNS: tuple[str, ...] = (
    "duration",
    "duration_s",
    "runtime",
    "runtime_s",
    "service_time",
    "elapsed",
    "seconds",
)
MINUTE_COLUMNS: tuple[str, ...] = ("minute", "minute_index", "t_minute")
COUNT_COLUMNS: tuple[str, ...] = ("count", "tasks", "n", "arrivals")
QUEUE_COLUMNS: tuple[str, ...] = ("queue", "queue_name", "routing_key")


class TraceFormatError(ValueError):
    """A trace file that cannot be read, with a one-line message that says why."""


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text if text is not None else "")
    except ValueError:
        raise TraceFormatError(
            f"{path}: line {line}: column {column!r} is {text!r}, not a number of seconds"
        ) from None
    if not np.isfinite(value):
        raise TraceFormatError(f"{path}: line {line}: column {column!r} is {text!r}")
    return value


def _timestamp(path: Path, line: int, column: str, text: str | None) -> float:
    """Seconds, or an ISO 8601 time (as Celery events and logs write them)."""
    try:
        return _number(path, line, column, text)
    except TraceFormatError:
        from datetime import datetime

        try:
            return datetime.fromisoformat((text or "").strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise TraceFormatError(
                f"{path}: line {line}: column {column!r} is {text!r}, neither seconds nor an "
                "ISO 8601 time"
            ) from None


def load_trace(
    path: str | Path,
    *,
    seed: int = 0,
    durations: str = "lognormal:2:0.5",
    queue: str | None = None,
) -> Trace:
    """Load a per-task or per-minute CSV (told apart by its header).

    Per-task: an arrival column (``arrival``, ``arrival_s``, ``timestamp``, … in seconds or
    ISO 8601), a duration column (``duration``, ``duration_s``, ``runtime``, … in seconds) and
    optionally ``queue``. Per-minute: ``minute,count[,queue]``, with durations drawn from
    ``durations``. ``queue`` keeps only that queue's rows. Anything else raises
    ``TraceFormatError`` with one line naming the columns found and the ones expected.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h for h in (reader.fieldnames or []) if h is not None]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TraceFormatError(f"{path}: cannot read the file: {exc}") from None
    arrival = _pick(header, ARRIVAL_COLUMNS)
    duration = _pick(header, DURATION_COLUMNS)
    minute = _pick(header, MINUTE_COLUMNS)
    count = _pick(header, COUNT_COLUMNS)
    queue_column = _pick(header, QUEUE_COLUMNS)
    if not ((arrival and duration) or (minute and count)):
        found = ", ".join(header) if header else "no header"
        raise TraceFormatError(
            f"{path}: found columns [{found}]; expected per-task "
            f"{'/'.join(ARRIVAL_COLUMNS[:3])} and {'/'.join(DURATION_COLUMNS[:3])} "
            "[, queue], or per-minute minute,count[,queue]"
        )
    if queue is not None:
        if queue_column is None:
            raise TraceFormatError(
                f"{path}: --queue {queue} asked for, but there is no queue column in "
                f"[{', '.join(header)}]"
            )
        rows = [r for r in rows if r.get(queue_column) == queue]
    rng = _rng(seed, path.name)
    if arrival and duration:
        arrivals = np.array(
            [_timestamp(path, i + 2, arrival, r.get(arrival)) for i, r in enumerate(rows)],
            dtype=np.float64,
        )
        spans = np.array(
            [_number(path, i + 2, duration, r.get(duration)) for i, r in enumerate(rows)],
            dtype=np.float64,
        )
        if len(spans) and float(spans.min()) <= 0:
            bad = int(np.argmin(spans))
            raise TraceFormatError(
                f"{path}: line {bad + 2}: column {duration!r} is {spans[bad]:g}; durations must "
                "be positive seconds"
            )
        order = np.argsort(arrivals, kind="stable")
        start = arrivals.min() if len(arrivals) else 0.0
        arrivals, spans = arrivals[order] - start, spans[order]
        horizon = float(np.ceil(arrivals.max())) if len(arrivals) else 0.0
    else:
        assert minute is not None
        assert count is not None
        minutes = np.array(
            [int(_number(path, i + 2, minute, r.get(minute))) for i, r in enumerate(rows)],
            dtype=np.int64,
        )
        counts = np.array(
            [int(_number(path, i + 2, count, r.get(count))) for i, r in enumerate(rows)],
            dtype=np.int64,
        )
        if len(counts) and int(counts.min()) < 0:
            raise TraceFormatError(f"{path}: column {count!r} has a negative count")
        starts = (
            np.repeat((minutes - minutes.min()) * 60.0, counts) if len(minutes) else np.zeros(0)
        )
        arrivals = np.sort(starts + 60.0 * rng.random(len(starts)))
        try:
            spans = durations_from_spec(durations, n=len(arrivals), rng=rng)
        except ValueError as exc:
            raise TraceFormatError(str(exc)) from None
        horizon = float((minutes.max() - minutes.min() + 1) * 60) if len(minutes) else 0.0
    if not len(arrivals):
        raise TraceFormatError(
            f"{path}: no tasks in the file" + (f" for queue {queue}" if queue else "")
        )
    return Trace(path.stem, arrivals, spans, max(horizon, 1.0), f"loaded from {path.name}")
