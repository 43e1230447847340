"""``tide recommend``: the cheapest WorkerPool settings that meet a p95 wait, from history.

No autoscaler tells its users what to set; KEDA users tune by trial and error in production.
Tide can do better because its policy is a pure function and the simulator replays a
recorded history through it exactly: each candidate setting is one replay, and the cheapest
candidate whose replayed p95 wait meets the user's target wins.

The search
----------
A coordinate descent from the pool's current settings: for each knob in turn (the wait
target the policy sizes for, the scale-down window, the cooldown before zero, the minimum
and maximum, the concurrency) every value on its grid is replayed with the other knobs held,
and the best feasible one is kept; two passes over the knobs settle it. Feasible means the
replayed p95 wait meets the target, nothing is interrupted and nothing is left unfinished;
among feasible settings the cheapest in slot-seconds wins (replica-seconds times concurrency,
so a pool of fewer, larger workers is compared fairly). If none is feasible, the one with the
lowest p95 wait is offered and the report says the target was missed. A few dozen replays
of a day of history take seconds to minutes, printed as they go.

What it prints
--------------
A ready-to-apply WorkerPool (validated by ``WorkerPoolSpec``, the model the CRD is generated
from), preceded by YAML comments with the predicted cost and waits of the recommendation,
of the current settings and of KEDA's defaults on the same history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from tide_operator.core.policy import Behavior, PolicyConfig, ScalingRules
from tide_operator.resources.spec import API_VERSION, KIND, WorkerPoolSpec
from tide_operator.simulation.baselines import make_controller
from tide_operator.simulation.report import Summary, summarize
from tide_operator.simulation.simulator import SimSettings, simulate
from tide_operator.simulation.traces import Trace

__all__ = [
    "Candidate",
    "Recommendation",
    "evaluate",
    "recommend",
    "render_workerpool",
]

# The grids each knob is searched over (the current value is always tried as well).
WINDOWS = (0, 30, 60, 120, 300)
COOLDOWNS = (0.0, 30.0, 60.0, 300.0, 900.0)
WAIT_FRACTIONS = (0.25, 0.5, 1.0, 2.0)
CONCURRENCY_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Candidate:
    """One setting of the knobs and what replaying it predicted."""

    spec: dict[str, Any]
    summary: Summary

    @property
    def concurrency(self) -> int:
        return int(self.spec.get("concurrency", 1))

    @property
    def slot_seconds(self) -> float:
        return self.summary.replica_seconds * self.concurrency

    def feasible(self, target_p95: float) -> bool:
        s = self.summary
        return s.p95_wait <= target_p95 and s.interrupted == 0 and s.unfinished == 0


@dataclass(frozen=True)
class Recommendation:
    best: Candidate
    current: Candidate
    keda_default: Summary
    keda_concurrency: int
    target_p95: float
    met: bool
    replays: int


def _with_window(spec: dict[str, Any], window: int) -> dict[str, Any]:
    behavior = Behavior.model_validate(spec.get("behavior") or {})
    down = behavior.scale_down
    rules = ScalingRules(
        stabilization_window_seconds=window,
        select_policy=down.select_policy,
        policies=down.policies,
    )
    updated = Behavior(scale_up=behavior.scale_up, scale_down=rules)
    return {**spec, "behavior": updated.model_dump(by_alias=True, exclude_defaults=False)}


def evaluate(trace: Trace, spec: dict[str, Any], *, settings: SimSettings) -> Summary:
    """Replay ``trace`` through Tide with a WorkerPool spec's scaling settings."""
    pool = WorkerPoolSpec.model_validate(spec)
    config: PolicyConfig = pool.to_policy_config()
    local = SimSettings(
        concurrency=pool.concurrency,
        startup_delay=settings.startup_delay,
        max_wait=settings.max_wait,
        max_replicas=pool.max_replicas,
        grace_period=float(pool.shutdown.grace_period_seconds),
    )
    controller = make_controller("tide", settings=local, trace=trace, config=config)
    return summarize(simulate(trace, controller, settings=local))


def _knobs(
    current: dict[str, Any], *, target_p95: float, peak_replicas: int
) -> list[tuple[str, Callable[[dict[str, Any]], Iterable[dict[str, Any]]]]]:
    base_concurrency = int(current.get("concurrency", 1))

    def waits(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for fraction in WAIT_FRACTIONS:
            yield {**spec, "maxWaitSeconds": round(max(1.0, target_p95 * fraction), 1)}

    def windows(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for window in WINDOWS:
            yield _with_window(spec, window)

    def cooldowns(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for cooldown in COOLDOWNS:
            yield {**spec, "cooldownPeriod": cooldown}

    def minimums(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        # Zero, one, half the peak and the peak: a floor is how a pool that cannot wait for
        # a worker to start meets a tight target on bursts from idle.
        conc = int(spec.get("concurrency", 1))
        need = max(1, math.ceil(peak_replicas * base_concurrency / conc))
        for low in sorted({0, 1, math.ceil(need / 2), need}):
            if low <= int(spec.get("maxReplicas", 10)):
                yield {**spec, "minReplicas": low}

    def maximums(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        conc = int(spec.get("concurrency", 1))
        need = max(1, math.ceil(peak_replicas * base_concurrency / conc))
        for high in sorted({need, math.ceil(need * 1.5), need * 2}):
            if high >= int(spec.get("minReplicas", 0)):
                yield {**spec, "maxReplicas": max(1, high)}

    def concurrencies(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for factor in CONCURRENCY_FACTORS:
            conc = max(1, round(base_concurrency * factor))
            scale = base_concurrency / conc
            high = max(1, math.ceil(int(spec.get("maxReplicas", 10)) * scale))
            yield {
                **spec,
                "concurrency": conc,
                "maxReplicas": max(high, int(spec.get("minReplicas", 0))),
            }

    return [
        ("maxWaitSeconds", waits),
        ("behavior.scaleDown.stabilizationWindowSeconds", windows),
        ("cooldownPeriod", cooldowns),
        ("minReplicas", minimums),
        ("maxReplicas", maximums),
        ("concurrency", concurrencies),
    ]


def _better(a: Candidate, b: Candidate | None, *, target_p95: float) -> bool:
    if b is None:
        return True
    fa, fb = a.feasible(target_p95), b.feasible(target_p95)
    if fa != fb:
        return fa
    if fa:
        return (a.slot_seconds, a.summary.p95_wait) < (b.slot_seconds, b.summary.p95_wait)
    return (a.summary.p95_wait, a.slot_seconds) < (b.summary.p95_wait, b.slot_seconds)


def recommend(
    trace: Trace,
    current: dict[str, Any],
    *,
    target_p95: float,
    settings: SimSettings,
    passes: int = 2,
    progress: Callable[[str], None] | None = None,
) -> Recommendation:
    """Search the knobs for the cheapest spec whose replay meets ``target_p95``."""
    WorkerPoolSpec.model_validate(current)  # a bad starting point is the user's to fix first
    seen: dict[str, Candidate] = {}

    def run(spec: dict[str, Any]) -> Candidate:
        key = yaml.safe_dump(spec, sort_keys=True)
        if key not in seen:
            seen[key] = Candidate(spec, evaluate(trace, spec, settings=settings))
            if progress is not None:
                s = seen[key].summary
                progress(
                    f"replay {len(seen)}: p95 {s.p95_wait:.1f}s, "
                    f"{seen[key].slot_seconds:,.0f} slot-s ({_describe(spec)})"
                )
        return seen[key]

    start = run(current)
    best = start
    conc = int(current.get("concurrency", 1))
    peak = max(1, math.ceil(trace.peak_slots() / conc))
    for _ in range(passes):
        for _name, values in _knobs(best.spec, target_p95=target_p95, peak_replicas=peak):
            for spec in values(best.spec):
                try:
                    candidate = run(spec)
                except ValueError:
                    continue  # a combination the model refuses (say min above max)
                if _better(candidate, best, target_p95=target_p95):
                    best = candidate
    keda_settings = SimSettings(
        concurrency=conc,
        startup_delay=settings.startup_delay,
        max_wait=settings.max_wait,
        max_replicas=int(current.get("maxReplicas", 10)),
        grace_period=settings.grace_period,
    )
    keda = summarize(
        simulate(
            trace,
            make_controller("keda-default", settings=keda_settings, trace=trace),
            settings=keda_settings,
        )
    )
    return Recommendation(
        best=best,
        current=start,
        keda_default=keda,
        keda_concurrency=conc,
        target_p95=target_p95,
        met=best.feasible(target_p95),
        replays=len(seen),
    )


def _describe(spec: dict[str, Any]) -> str:
    window = ((spec.get("behavior") or {}).get("scaleDown") or {}).get("stabilizationWindowSeconds")
    return (
        f"concurrency {spec.get('concurrency', 1)}, min {spec.get('minReplicas', 0)}, "
        f"max {spec.get('maxReplicas', 10)}, maxWait {spec.get('maxWaitSeconds', 60)}, "
        f"window {window if window is not None else 'default'}, "
        f"cooldown {spec.get('cooldownPeriod', 60)}"
    )


def _line(label: str, summary: Summary, concurrency: int) -> str:
    return (
        f"#   {label:<22} p50 {summary.p50_wait:6.1f}s  p95 {summary.p95_wait:6.1f}s  "
        f"p99 {summary.p99_wait:6.1f}s  {summary.replica_seconds:>12,.0f} replica-s "
        f"x {concurrency} slots = {summary.replica_seconds * concurrency:>12,.0f} slot-s  "
        f"interrupted {summary.interrupted}"
    )


def render_workerpool(
    result: Recommendation,
    *,
    name: str,
    namespace: str | None,
    trace: Trace,
) -> str:
    """The recommended WorkerPool as YAML, with the predictions as comments above it."""
    spec = WorkerPoolSpec.model_validate(result.best.spec)
    body = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    # The fields the search set are always written, defaults or not, so the file says them.
    for key in ("concurrency", "minReplicas", "maxReplicas", "maxWaitSeconds", "cooldownPeriod"):
        if key in result.best.spec:
            body[key] = result.best.spec[key]
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}
    verdict = (
        f"meets the p95 wait target of {result.target_p95:g}s"
        if result.met
        else f"MISSES the p95 wait target of {result.target_p95:g}s (the closest found)"
    )
    header = [
        f"# tide recommend: {trace.name}, {trace.tasks:,} tasks over {trace.horizon / 3600:.1f} h",
        f"# {result.replays} settings replayed; this one {verdict}.",
        "# Predicted on the same history:",
        _line("recommended", result.best.summary, result.best.concurrency),
        _line("current settings", result.current.summary, result.current.concurrency),
        _line("KEDA defaults", result.keda_default, result.keda_concurrency),
    ]
    saving = (
        1 - result.best.slot_seconds / result.current.slot_seconds
        if (result.current.slot_seconds)
        else 0.0
    )
    header.append(f"# Cost against the current settings: {-saving:+.0%}.")
    document: str = yaml.safe_dump(manifest, sort_keys=False)
    return "\n".join(header) + "\n" + document
