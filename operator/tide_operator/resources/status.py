"""The WorkerPool status and its conditions, as a pure function of what a step saw and did.

The operator writes status only when it differs from what is on the object, so "nothing
changed" must produce an identical dict. Two rules make that true: a condition's
``lastTransitionTime`` moves only when its ``status`` flips (the Kubernetes convention), and
``lastObservation.at`` moves only when the figures it dates change. A steady, idle pool
therefore costs no writes at all, however often it is polled.

Condition types and reasons are named constants, as in the Kubernetes sample-controller:

* ``Ready``: the pool's configuration is accepted and its workload is in place: the spec
  is valid, the target exists (created, or found and not someone else's), and the
  operator's writes to it succeed; otherwise ``False`` with the reason (``InvalidSpec``,
  ``TargetNotFound``, ``DeploymentNotOwned``, ``ScaleFailed``, ``TargetUnreadable``,
  ``ApiError``). Metrics do not decide it: a pool whose queue figures are briefly
  unreadable still has its workers and holds (or falls back), and Helm 4's ``--wait``
  (kstatus) waits on ``Ready``, so an exporter restart must not fail an upgrade;
* ``MetricsAvailable``: the last read of the queues succeeded (``MetricsRead``), or not
  (``MetricsUnavailable`` with the source's message); ``Unknown`` before the first read;
* ``Active``: the pool wants workers (KEDA's word); ``False`` when scaled to zero;
* ``WorkersAvailable``: the workers the pool wants exist and are ready. ``False`` with the
  controller's own reason and message when pods are not being created or not progressing
  (``FailedCreate``: quota, PodSecurity, a missing service account;
  ``ProgressDeadlineExceeded``), else ``WorkersNotReady`` while they start or when they
  cannot (Pending: no node fits; an image that will not pull; a crash loop). It is read
  from what exists — the Deployment's ``status`` as its controllers wrote it — never from
  the ``spec.replicas`` the operator set itself, and so are ``replicas`` (pods that exist,
  terminating ones excluded, as the ReplicaSet controller counts them) and
  ``readyReplicas``;
* ``Fallback``: the policy runs ``fallback.replicas`` because metrics stayed unreadable;
* ``Paused``: ``spec.paused`` is set and the operator keeps its hands off;
* ``SafeScaleIn``: ``False`` when the pool cannot shrink without risking tasks (a grace
  period shorter than the longest task, early acks without Tide's integration, prefetch
  above 1, fewer slots than declared, workers the operator cannot address), decided from
  what the workers really run where they answered (``safety.py``), and ``workers`` on
  the status says what that was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tide_operator.core.policy import (
    FALLBACK,
    METRICS_UNAVAILABLE,
    PAUSED,
    Decision,
    Observation,
)

__all__ = [
    "ACTIVE",
    "CONDITION_TYPES",
    "FALLBACK_CONDITION",
    "METRICS_AVAILABLE",
    "PAUSED_CONDITION",
    "READY",
    "SAFE_SCALE_IN",
    "WORKERS_AVAILABLE",
    "Replicas",
    "build_status",
    "condition",
    "format_time",
    "status_changed",
]

READY: Final = "Ready"
METRICS_AVAILABLE: Final = "MetricsAvailable"
ACTIVE: Final = "Active"
WORKERS_AVAILABLE: Final = "WorkersAvailable"
FALLBACK_CONDITION: Final = "Fallback"
PAUSED_CONDITION: Final = "Paused"
SAFE_SCALE_IN: Final = "SafeScaleIn"
CONDITION_TYPES: Final = (
    READY,
    METRICS_AVAILABLE,
    ACTIVE,
    WORKERS_AVAILABLE,
    FALLBACK_CONDITION,
    PAUSED_CONDITION,
    SAFE_SCALE_IN,
)

# Reasons (CamelCase, stable: alerts and tests match on them).
RECONCILED: Final = "Reconciled"
METRICS_READ: Final = "MetricsRead"
NOT_READ: Final = "NotRead"
INVALID_SPEC: Final = "InvalidSpec"
# The pool's API requests fail (the API server is unreachable or refuses them).
API_ERROR: Final = "ApiError"
WORKERS_WANTED: Final = "WorkersWanted"
ALL_WORKERS_READY: Final = "AllWorkersReady"
WORKERS_NOT_READY: Final = "WorkersNotReady"
SCALED_TO_ZERO: Final = "ScaledToZero"
FALLBACK_ACTIVE: Final = "FallbackActive"
METRICS_HEALTHY: Final = "MetricsHealthy"
PAUSED_BY_SPEC: Final = "PausedBySpec"
SCALING: Final = "Scaling"
SAFE: Final = "Safe"
UNSAFE_CONFIGURATION: Final = "UnsafeConfiguration"
# Event reasons of dead-worker recovery (a worker pod gone while holding messages).
WORKER_RECOVERED: Final = "WorkerRecovered"
WORKER_LEASE_HELD: Final = "WorkerLeaseHeld"


@dataclass(frozen=True, slots=True)
class Replicas:
    """What exists of a pool's workers, as the target's own controllers report it.

    ``existing``: pods that exist and are not terminating; ``ready``: those ready;
    ``failure``: (reason, message) a controller gives for pods it cannot create or bring
    up, such as a ReplicaSet's ``FailedCreate``.
    """

    existing: int
    ready: int
    failure: tuple[str, str] | None = None


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: Sequence[Mapping[str, Any]],
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    """One condition, keeping ``lastTransitionTime`` unless the status flips."""
    value = "Unknown" if status is None else ("True" if status else "False")
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before.get("lastTransitionTime") if before and before.get("status") == value else None
    result: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def _observation(
    observation: Observation | None, previous: Mapping[str, Any] | None, *, now: str
) -> dict[str, Any] | None:
    if observation is None:
        return dict(previous) if previous else None
    figures: dict[str, Any] = {
        "waiting": observation.waiting,
        "inflight": observation.inflight,
        "scheduled": observation.scheduled,
        # Whole seconds: sub-second drift is noise that would cost a write per poll.
        "oldestAgeSeconds": None
        if observation.oldest_age is None
        else round(observation.oldest_age),
    }
    if figures["oldestAgeSeconds"] is None:
        del figures["oldestAgeSeconds"]
    same = (
        previous is not None
        and all(previous.get(k) == v for k, v in figures.items())
        and ("oldestAgeSeconds" in previous) == ("oldestAgeSeconds" in figures)
    )
    figures["at"] = previous["at"] if same and previous is not None else now
    return figures


def build_status(
    *,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
    current: int | None,
    ready: int | None,
    decision: Decision | None,
    observation: Observation | None,
    scaled: bool,
    error: tuple[str, str] | None,
    paused: bool,
    hazards: Sequence[str],
    selector: str | None = None,
    workers: Mapping[str, Any] | None = None,
    replicas: Replicas | None = None,
    metrics_error: str | None = None,
    forecast: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole status to have on the object after a step.

    ``error`` is (reason, message) for the ``Ready`` condition when something failed;
    ``metrics_error`` is why the queues could not be read (``MetricsAvailable=False``);
    ``decision`` is None when the step stopped before the policy (invalid spec, no target).
    ``workers`` is what the workers said they run (``safety.workers_status``); without a
    new answer the last one stays, as a pool scaled to zero still ran what it ran.
    ``replicas`` is what exists (``Replicas``); ``current`` (the size the target was set
    to) stands in for it only for a target that cannot tell (local mode's processes).
    """
    stamp = format_time(now)
    before: Mapping[str, Any] = previous or {}
    conditions_before: Sequence[Mapping[str, Any]] = before.get("conditions") or []
    status: dict[str, Any] = {}
    if generation is not None:
        status["observedGeneration"] = generation
    if replicas is not None:
        status["replicas"] = replicas.existing
        status["readyReplicas"] = replicas.ready
    else:
        if current is not None:
            status["replicas"] = current
        elif "replicas" in before:
            status["replicas"] = before["replicas"]
        if ready is not None:
            status["readyReplicas"] = ready
        elif "readyReplicas" in before:
            status["readyReplicas"] = before["readyReplicas"]
    if selector:
        status["selector"] = selector
    if decision is not None:
        status["desiredReplicas"] = decision.replicas
        status["lastDecision"] = decision.reason
    else:
        for key in ("desiredReplicas", "lastDecision"):
            if key in before:
                status[key] = before[key]
    last = _observation(observation, before.get("lastObservation"), now=stamp)
    if last is not None:
        status["lastObservation"] = last
    if workers is not None:
        status["workers"] = dict(workers)
    elif "workers" in before:
        status["workers"] = before["workers"]
    if forecast is not None:
        # The seasonal profile changes once per bucket (five minutes of a day): no write
        # per poll on its account.
        status["forecast"] = dict(forecast)
    elif "forecast" in before:
        status["forecast"] = before["forecast"]
    if scaled:
        status["lastScaleTime"] = stamp
    elif "lastScaleTime" in before:
        status["lastScaleTime"] = before["lastScaleTime"]

    def cond(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
        return condition(
            conditions_before,
            type_=type_,
            status=ok,
            reason=reason,
            message=message,
            now=stamp,
            generation=generation,
        )

    if error is not None:
        ready_condition = cond(READY, False, error[0], error[1])
    else:
        ready_condition = cond(READY, True, RECONCILED, "spec accepted and target reconciled")
    conditions = [ready_condition]

    if decision is not None:  # the queues were read (or tried) this step
        if metrics_error is None:
            conditions.append(cond(METRICS_AVAILABLE, True, METRICS_READ, "queues read"))
        else:
            message = metrics_error or "the metrics source gave no figures"
            conditions.append(cond(METRICS_AVAILABLE, False, METRICS_UNAVAILABLE, message))
    else:
        # The step stopped before reading: what was last known stays, as it was.
        known = next((c for c in conditions_before if c.get("type") == METRICS_AVAILABLE), None)
        conditions.append(
            dict(known)
            if known is not None
            else cond(METRICS_AVAILABLE, None, NOT_READ, "the queues have not been read yet")
        )

    desired = decision.replicas if decision is not None else current
    if desired is None:
        conditions.append(cond(ACTIVE, None, "Unknown", "the target could not be read"))
    elif desired > 0:
        conditions.append(cond(ACTIVE, True, WORKERS_WANTED, f"{desired} workers wanted"))
    else:
        conditions.append(cond(ACTIVE, False, SCALED_TO_ZERO, "no workers: scaled to zero"))

    if replicas is not None and desired is not None:
        conditions.append(_workers_available(cond, replicas, desired=desired))
    else:
        # Not read this time (the step stopped early): what was last known stands.
        kept = condition_of(before, WORKERS_AVAILABLE)
        if kept is not None:
            conditions.append(dict(kept))

    if decision is not None and decision.reason_code == FALLBACK:
        conditions.append(cond(FALLBACK_CONDITION, True, FALLBACK_ACTIVE, decision.reason))
    else:
        conditions.append(
            cond(FALLBACK_CONDITION, False, METRICS_HEALTHY, "not running fallback replicas")
        )

    if paused or (decision is not None and decision.reason_code == PAUSED):
        conditions.append(
            cond(PAUSED_CONDITION, True, PAUSED_BY_SPEC, "spec.paused: replicas are left alone")
        )
    else:
        conditions.append(cond(PAUSED_CONDITION, False, SCALING, "the operator scales the pool"))

    if hazards:
        conditions.append(cond(SAFE_SCALE_IN, False, UNSAFE_CONFIGURATION, "; ".join(hazards)))
    else:
        conditions.append(
            cond(SAFE_SCALE_IN, True, SAFE, "workers finish their tasks before they stop")
        )
    status["conditions"] = conditions
    return status


def _workers_available(
    cond: Callable[[str, bool | None, str, str], dict[str, Any]],
    replicas: Replicas,
    *,
    desired: int,
) -> dict[str, Any]:
    """``WorkersAvailable`` from what exists against what the pool wants."""
    if replicas.failure is not None:
        # The controller's reason and words: they name the quota, the missing service
        # account or the PodSecurity rule, which is what the reader has to fix.
        reason, message = replicas.failure
        return cond(WORKERS_AVAILABLE, False, reason, message)
    if desired == 0:
        return cond(WORKERS_AVAILABLE, True, SCALED_TO_ZERO, "no workers wanted")
    if replicas.ready >= desired:
        return cond(
            WORKERS_AVAILABLE, True, ALL_WORKERS_READY, f"{replicas.ready} of {desired} ready"
        )
    return cond(
        WORKERS_AVAILABLE,
        False,
        WORKERS_NOT_READY,
        f"{replicas.ready} of {desired} ready, {replicas.existing} exist",
    )


def status_changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything the object already says."""
    before = previous or {}
    return any(before.get(key) != value for key, value in new.items())


def condition_of(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for item in (status or {}).get("conditions") or []:
        if item.get("type") == type_:
            result: Mapping[str, Any] = item
            return result
    return None
