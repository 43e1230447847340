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

Files load through ``load_trace``: a per-task CSV (``arrival,duration[,queue]``) replays
exactly; a per-minute counts CSV (``minute,count[,queue]``) spreads each minute's count
uniformly over the minute and draws durations from a named distribution.
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
    "Trace",
    "builtin_trace",
    "durations_from_spec",
    "load_trace",
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


def _rng(seed: int, name: str) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


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


BUILTIN_TRACES: dict[str, Callable[[int], Trace]] = {
    "steady": steady,
    "diurnal": diurnal,
    "spike": spike,
    "bursts": bursts,
    "hourly-batch": hourly_batch,
    "heavy-tailed": heavy_tailed,
    "long-short": long_short,
    "noisy": noisy,
}


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


def load_trace(
    path: str | Path,
    *,
    seed: int = 0,
    durations: str = "lognormal:2:0.5",
    queue: str | None = None,
) -> Trace:
    """Load a per-task or per-minute CSV (told apart by its header).

    Per-task: ``arrival,duration[,queue]`` (seconds). Per-minute: ``minute,count[,queue]``,
    with durations drawn from ``durations``. ``queue`` keeps only that queue's rows.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if queue is not None:
        rows = [r for r in rows if r.get("queue") == queue]
    header = set(rows[0]) if rows else set()
    rng = _rng(seed, path.name)
    if {"arrival", "duration"} <= header:
        arrivals = np.array([float(r["arrival"]) for r in rows], dtype=np.float64)
        spans = np.array([float(r["duration"]) for r in rows], dtype=np.float64)
        order = np.argsort(arrivals, kind="stable")
        arrivals, spans = arrivals[order] - arrivals.min(), spans[order]
        horizon = float(np.ceil(arrivals.max())) if len(arrivals) else 0.0
    elif {"minute", "count"} <= header:
        minutes = np.array([int(float(r["minute"])) for r in rows], dtype=np.int64)
        counts = np.array([int(float(r["count"])) for r in rows], dtype=np.int64)
        starts = np.repeat((minutes - minutes.min()) * 60.0, counts)
        arrivals = np.sort(starts + 60.0 * rng.random(len(starts)))
        spans = durations_from_spec(durations, n=len(arrivals), rng=rng)
        horizon = float((minutes.max() - minutes.min() + 1) * 60) if len(minutes) else 0.0
    else:
        raise ValueError(
            f"{path}: expected a header with arrival,duration[,queue] (per task) or "
            "minute,count[,queue] (per minute)"
        )
    return Trace(path.stem, arrivals, spans, max(horizon, 1.0), f"loaded from {path.name}")
