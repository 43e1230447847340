"""One reconcile step of one pool: read, decide, apply, and say what to report.

This is the loop body that the operator's per-pool loop and local mode (``tide up``) both
run, so the cluster and a laptop scale by exactly the same steps::

    result = await reconcile_step(spec=..., source=..., target=..., state=..., now=..., wall=...)
    state = result.state        # thread it into the next step
    write result.status (if changed), post result.events

The step owns no state: the policy's memory comes in as ``state`` and goes out in the
result; the previous status comes in so that condition transition times and "changed or
not" survive. It performs the target's I/O (read the size, mark idle workers, scale) and the
source's (read the queues) through the two small interfaces, and nothing else: writing the
status and posting events is the caller's business (a Kubernetes patch and Events for the
operator, a terminal view for local mode), which is why they are returned, not done.

Before a scale-down the step asks the target which workers hold running tasks (when it can:
``ReportsBusy``) and decides again with that count, so the policy's in-flight floor counts
replicas that hold tasks, not slots, in the cluster as in the simulator. The same answer
carries how long the longest-running task has run (``ReportsTaskAges``), which is how the
policy learns whether a busy worker's tasks end well within the grace period.

Order matters in two places. Idle workers are marked *before* the replicas drop, so the
ReplicaSet controller already sees the costs when it picks pods to delete. And the target is
read before the metrics, so a missing Deployment is reported as such rather than masked by
a metrics error.

``SafeScaleIn`` is decided last, from what a target that can tell (``ReportsWorkers``)
says its workers run and, for an adopted Deployment, from its pod template
(``resources.safety``); a target that cannot tell leaves the spec's declarations to stand.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from tide_operator.adapters.kube import Unreachable
from tide_operator.adapters.sources import MetricSource, MetricsUnavailable
from tide_operator.adapters.targets import (
    Consolidates,
    ReportsBusy,
    ReportsReplicaStatus,
    ReportsTaskAges,
    ReportsWorkers,
    ScaleTarget,
    TargetUnavailable,
)
from tide_operator.core.policy import (
    FALLBACK,
    SEASON_BUCKETS,
    Decision,
    Observation,
    PolicyState,
    decide,
    restore_season,
    season_profile,
)
from tide_operator.resources.safety import WorkerFacts, scale_in_hazards, workers_status
from tide_operator.resources.spec import WorkerPoolSpec
from tide_operator.resources.status import (
    INVALID_SPEC,
    METRICS_AVAILABLE,
    READY,
    SAFE_SCALE_IN,
    WORKERS_AVAILABLE,
    WORKERS_NOT_READY,
    Replicas,
    build_status,
    condition_of,
)

__all__ = ["PoolEvent", "StepResult", "failed_step", "reconcile_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """Something worth a Kubernetes Event (or a line in local mode's view)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step saw, decided and did, and what to report about it."""

    state: PolicyState
    status: dict[str, Any]
    events: tuple[PoolEvent, ...]
    decision: Decision | None = None
    observation: Observation | None = None
    current: int | None = None
    scaled: bool = False
    metric_error: str | None = None
    error: tuple[str, str] | None = None
    # What exists (the target's controllers' count), when the target can tell.
    replicas: Replicas | None = None

    @property
    def direction(self) -> Literal["up", "down"] | None:
        if not self.scaled or self.decision is None or self.current is None:
            return None
        return "up" if self.decision.replicas > self.current else "down"


def _transition_events(
    previous: Mapping[str, Any] | None, status: Mapping[str, Any]
) -> list[PoolEvent]:
    """Warnings when Ready, MetricsAvailable, WorkersAvailable or SafeScaleIn turn False
    (once, not every poll).

    ``WorkersAvailable`` warns only with a controller's reason (``FailedCreate``, ...):
    workers still starting after a scale-up are ``WorkersNotReady`` for a few seconds every
    time, which is no news.
    """
    events = []
    for type_ in (READY, METRICS_AVAILABLE, WORKERS_AVAILABLE, SAFE_SCALE_IN):
        before = condition_of(previous, type_)
        after = condition_of(status, type_)
        if after is None or after["status"] != "False":
            continue
        if type_ == WORKERS_AVAILABLE and after["reason"] == WORKERS_NOT_READY:
            continue
        if (
            before is None
            or before.get("status") != "False"
            or before.get("reason") != after["reason"]
        ):
            # Never an empty message: an Event is read on its own, in kubectl describe.
            message = str(after.get("message") or f"{type_} is False: {after['reason']}")
            events.append(PoolEvent("Warning", str(after["reason"]), message))
    return events


def failed_step(
    *,
    state: PolicyState,
    previous_status: Mapping[str, Any] | None,
    generation: int | None,
    wall: datetime,
    reason: str,
    message: str,
    spec: WorkerPoolSpec | None = None,
    current: int | None = None,
) -> StepResult:
    """A step that stopped before deciding (invalid spec, missing target, API error)."""
    status = build_status(
        previous=previous_status,
        generation=generation,
        now=wall,
        current=current,
        ready=None,
        decision=None,
        observation=None,
        scaled=False,
        error=(reason, message),
        paused=spec.paused if spec is not None else False,
        hazards=scale_in_hazards(spec) if spec is not None else (),
    )
    return StepResult(
        state=state,
        status=status,
        events=tuple(_transition_events(previous_status, status)),
        current=current,
        error=(reason, message),
    )


def _phase(season: int, *, now: float, wall: datetime) -> int:
    """Buckets between the policy's clock and the wall clock, modulo the season.

    The policy indexes its profile by ``now`` (monotonic seconds, which another pod or
    node counts from another origin); the status stores it by UTC time of day, so the
    profile a restarted operator reads back lines up with the hours it was learnt in.
    """
    width = season / SEASON_BUCKETS
    return round(((wall.timestamp() - now) % season) / width) % SEASON_BUCKETS


def _restored(
    state: PolicyState, stored: Any, *, config: Any, now: float, wall: datetime
) -> PolicyState:
    """``state`` with the seasonal profile of ``status.forecast``, if it fits the spec."""
    if not isinstance(stored, Mapping):
        return state
    try:
        by_wall = [float(v) for v in stored["arrivalsPerSecond"]]
        season = int(stored["seasonSeconds"])
    except (KeyError, TypeError, ValueError):
        return state  # not ours to trust: learn it anew
    if season <= 0 or len(by_wall) != SEASON_BUCKETS:
        return state
    shift = _phase(season, now=now, wall=wall)
    profile = [by_wall[(j + shift) % SEASON_BUCKETS] for j in range(SEASON_BUCKETS)]
    return restore_season(state, profile, season_seconds=season, config=config)


async def _keep_busy_without_metrics(
    target: ReportsBusy, decision: Decision, *, current: int, now: float
) -> Decision:
    """A scale-down while the metrics are unreadable keeps every worker that holds a task.

    With no observation (the fallback, or a hold below the current size) the policy knows
    only which workers held tasks at the last good read; a worker that took tasks since
    (one that became ready just before Prometheus went away) would be removed while it
    runs them. The workers themselves still answer: the probe asks them through the broker,
    not through the metrics backend. So ask them, and keep at least those that hold tasks
    (never above the current size). Seen in the chaos bench: a fallback to 2 removed a
    worker 3 s after it had taken 4 tasks.
    """
    try:
        holding = await target.busy_replicas()
    except Unreachable:
        raise
    except Exception as exc:
        log.warning("could not ask the workers which hold tasks: %s", exc)
        return decision
    if holding is None or holding <= decision.replicas:
        return decision
    kept = min(current, holding)
    # The policy recorded its move as made; record the one made instead (none at all when
    # the pool keeps its size), so the step limits count only what happened.
    events = tuple(e for e in decision.state.scale_events if e[0] != now)
    if kept != current:
        events = (*events, (now, kept - current))
    return replace(
        decision,
        replicas=kept,
        reason=f"{decision.reason}; kept {kept}: {holding} workers hold tasks",
        state=replace(decision.state, scale_events=events),
    )


def _forecast_status(
    state: PolicyState, spec: WorkerPoolSpec, *, now: float, wall: datetime
) -> dict[str, Any] | None:
    profile = season_profile(state)
    if profile is None:
        return None
    season = spec.to_policy_config().forecast.season_seconds
    shift = _phase(season, now=now, wall=wall)
    return {
        "seasonSeconds": season,
        "arrivalsPerSecond": [profile[(i - shift) % SEASON_BUCKETS] for i in range(SEASON_BUCKETS)],
    }


async def reconcile_step(
    *,
    spec: WorkerPoolSpec,
    source: MetricSource,
    target: ScaleTarget,
    state: PolicyState,
    now: float,
    wall: datetime,
    previous_status: Mapping[str, Any] | None = None,
    generation: int | None = None,
    selector: str | None = None,
    stored_status: Mapping[str, Any] | None = None,
) -> StepResult:
    """Read the target and the queues, decide, apply; return the status and events.

    ``stored_status`` is the status as read from the object: a fresh ``state`` (an operator
    restart) starts from the seasonal profile stored there (``status.forecast``).

    ``now`` is the policy's clock (monotonic seconds, the same clock as the observations);
    ``wall`` dates the status. Exceptions other than the two interfaces' own
    (``MetricsUnavailable``, ``TargetUnavailable``) propagate: they are bugs or API errors
    the caller reports.
    """
    try:
        config = spec.to_policy_config()
    except ValueError as exc:  # pragma: no cover - the spec validators mirror the policy's
        return failed_step(
            state=state,
            previous_status=previous_status,
            generation=generation,
            wall=wall,
            reason=INVALID_SPEC,
            message=str(exc),
            spec=spec,
        )
    if not state.initialised and stored_status:
        state = _restored(state, stored_status.get("forecast"), config=config, now=now, wall=wall)
    try:
        current = await target.current()
    except TargetUnavailable as exc:
        return failed_step(
            state=state,
            previous_status=previous_status,
            generation=generation,
            wall=wall,
            reason=exc.reason,
            message=exc.message,
            spec=spec,
        )

    observation: Observation | None
    metric_error: str | None = None
    try:
        observation = await source.observe(spec.queues, now=now)
    except MetricsUnavailable as exc:
        observation, metric_error = None, str(exc)

    # Consolidation (``shutdown.consolidate``): busy workers leave by being cordoned, so the
    # policy sizes the consuming workers only, and keeps none for the work in flight beyond
    # the slots it fills. The Deployment holds the cordoned ones besides.
    consolidating = (
        spec.shutdown.consolidate and isinstance(target, Consolidates) and target.can_consolidate
    )
    cordoned = 0
    if consolidating:
        assert isinstance(target, Consolidates)
        try:
            cordoned = await target.cordoned()
        except Unreachable:
            raise
        except Exception as exc:
            log.warning("could not list the cordoned workers: %s", exc)
            consolidating = False
    serving = current - cordoned

    decision = decide(
        config=config, state=state, observation=observation, current_replicas=serving, now=now
    )
    if (
        not consolidating
        and decision.replicas < current
        and observation is not None
        and observation.busy_replicas is None
        and isinstance(target, ReportsBusy)
    ):
        # A scale-down must not take a worker that holds a task: ask the workers which hold
        # tasks (only now, so the broadcast runs on scale-downs, not on every poll) and
        # decide again on the same state with that figure. The policy is pure, so the
        # second call simply replaces the first.
        age: float | None = None
        try:
            if isinstance(target, ReportsTaskAges):
                holding, age = await target.busy_replicas_with_age()
            else:
                holding = await target.busy_replicas()
        except Exception as exc:
            log.warning("could not ask the workers which hold tasks: %s", exc)
            holding = None
        if holding is not None:
            # The running tasks' ages come with the answer: the policy's evidence that a
            # busy worker's tasks end well within its grace period.
            observation = replace(observation, busy_replicas=holding, oldest_running_age=age)
            decision = decide(
                config=config,
                state=state,
                observation=observation,
                current_replicas=current,
                now=now,
            )
    if (
        not consolidating
        and observation is None
        and decision.replicas < current
        and isinstance(target, ReportsBusy)
    ):
        decision = await _keep_busy_without_metrics(target, decision, current=current, now=now)
    scaled = False
    # Metrics trouble is MetricsAvailable=False, not Ready=False: the pool is configured and
    # its workers exist; it holds (or falls back) until the figures return.
    error: tuple[str, str] | None = None
    replicas_now = current
    if consolidating and (decision.replicas != serving or cordoned):
        assert isinstance(target, Consolidates)
        try:
            replicas_now = await target.consolidate(
                decision.replicas, current=current, queues=spec.queues, reason=decision.reason
            )
            scaled = replicas_now != current
        except TargetUnavailable as exc:
            error = (exc.reason, exc.message)
        except Unreachable:
            raise
        except Exception as exc:  # a broker hiccup: hold, and try again next step
            log.warning("could not consolidate the workers: %s", exc)
    elif not consolidating and decision.replicas != current:
        try:
            if decision.replicas < current:
                try:
                    await target.mark_idle_first(current - decision.replicas)
                except Unreachable:
                    raise  # the API server is gone: the whole step is, not just the marks
                except Exception as exc:
                    log.warning("could not mark idle workers before scaling down: %s", exc)
            await target.scale(decision.replicas, reason=decision.reason)
            scaled = True
            replicas_now = decision.replicas
        except TargetUnavailable as exc:
            error = (exc.reason, exc.message)

    # What exists, for the status and the metrics; the policy moved from ``current``.
    counts = await target.replica_status() if isinstance(target, ReportsReplicaStatus) else None
    facts: WorkerFacts | None = None
    pod_template = None
    if isinstance(target, ReportsWorkers):
        pod_template = target.adopted_template()
        try:
            facts = await target.worker_facts(now=now)
        except Exception as exc:  # a broker hiccup must not cost the pool its decision
            log.warning("could not ask the workers what they run: %s", exc)
    status = build_status(
        previous=previous_status,
        generation=generation,
        now=wall,
        current=replicas_now,
        ready=None,
        replicas=counts,
        decision=decision,
        observation=observation,
        scaled=scaled,
        error=error,
        paused=spec.paused,
        hazards=scale_in_hazards(spec, pod_template=pod_template, facts=facts),
        selector=selector,
        workers=workers_status(facts),
        metrics_error=metric_error,
        forecast=_forecast_status(decision.state, spec, now=now, wall=wall),
    )
    events = []
    if scaled:
        kind: Literal["Normal", "Warning"] = (
            "Warning" if decision.reason_code == FALLBACK else "Normal"
        )
        events.append(PoolEvent(kind, decision.reason_code, decision.reason))
    events += _transition_events(previous_status, status)
    return StepResult(
        state=decision.state,
        status=status,
        events=tuple(events),
        decision=decision,
        observation=observation,
        current=serving,
        scaled=scaled,
        metric_error=metric_error,
        error=error,
        replicas=counts,
    )
