"""Whether removing a worker can lose or delay a task: the ``SafeScaleIn`` findings.

Three sources, in order of how much they know:

* what the workers run, as they say themselves (``WorkerReport``: ``inspect conf`` and
  ``stats``, and whether Tide's integration counts their running tasks). This is the
  truth for the acknowledgement mode, the prefetch multiplier and the concurrency: a
  pool's ``worker`` fields are only what its author believes, and a team's app that keeps
  Celery's defaults (early acks, prefetch 4) declared as ``acksLate: true`` would
  otherwise be reported safe;
* the pod template of an adopted Deployment (``scaleTargetRef``), which the operator reads
  but never changes: its grace period and the node name its command line gives;
* the spec's own declarations, the fallback while no worker has answered (a pool at zero
  replicas, or an operator without a broker to ask).

Early acks are a hazard only without the integration: with it, running tasks are counted
(so the policy never scales below them) and the pod's grace period lets Celery's warm
shutdown finish them. A worker that runs fewer slots than the pool declares is one too:
the policy then believes fewer workers hold the running tasks than really do.

Everything here is pure: reports come in as values, findings go out as sentences.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tide_operator.resources.spec import WorkerPoolSpec

__all__ = [
    "DEFAULT_TERMINATION_GRACE",
    "WorkerFacts",
    "WorkerReport",
    "adopted_hazards",
    "node_name_of",
    "report_from_inspect",
    "scale_in_hazards",
    "workers_status",
]

#: What Kubernetes gives a pod whose template says nothing.
DEFAULT_TERMINATION_GRACE: Final = 30
#: Node names the operator can address: ``worker@`` and the pod's name, however spelled.
ADDRESSABLE_NAMES: Final = frozenset(
    {"worker@%h", "worker@%n", "worker@$(POD_NAME)", "worker@$(HOSTNAME)", "worker@$HOSTNAME"}
)
#: Celery's default node name when the command line gives none.
CELERY_DEFAULT_NAME: Final = "celery@%h"


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker, as it answered: its real settings, and whether its tasks are counted."""

    node: str
    acks_late: bool
    prefetch_multiplier: int
    concurrency: int | None
    #: Registered with Tide's integration (its running tasks are counted); None: unknown.
    integration: bool | None = None
    #: ``worker_disable_prefetch`` (Celery 5.6+): the worker reserves nothing ahead.
    prefetch_disabled: bool = False


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """The answers of one ask: who answered and who, asked by name, stayed silent."""

    answered: tuple[WorkerReport, ...] = ()
    silent: tuple[str, ...] = ()


def report_from_inspect(
    node: str,
    *,
    conf: Mapping[str, Any],
    stats: Mapping[str, Any] | None,
    integration: bool | None,
) -> WorkerReport:
    """A ``WorkerReport`` from a worker's ``inspect conf`` (with defaults) and ``stats``."""
    pool = (stats or {}).get("pool") or {}
    concurrency = pool.get("max-concurrency")
    if not isinstance(concurrency, int):
        raw = conf.get("worker_concurrency")
        concurrency = raw if isinstance(raw, int) else None
    multiplier = conf.get("worker_prefetch_multiplier")
    return WorkerReport(
        node=node,
        acks_late=bool(conf.get("task_acks_late", False)),
        prefetch_multiplier=int(multiplier) if isinstance(multiplier, int) else 4,
        concurrency=concurrency,
        integration=integration,
        prefetch_disabled=bool(conf.get("worker_disable_prefetch", False)),
    )


# ----------------------------------------------------------------------------- adoption


def _argv(container: Mapping[str, Any]) -> list[str]:
    """The container's command line as words; a shell's script (``sh -c "…"``) is split."""
    words: list[str] = []
    for part in [*(container.get("command") or []), *(container.get("args") or [])]:
        text = str(part)
        if any(ch.isspace() for ch in text):
            try:
                words += shlex.split(text)
            except ValueError:
                words += text.split()
        else:
            words.append(text)
    return words


def _is_worker(words: Sequence[str]) -> bool:
    return "worker" in words


def node_name_of(container: Mapping[str, Any]) -> str | None:
    """The ``-n``/``--hostname`` a worker's command line gives, or None when it gives none."""
    words = _argv(container)
    found: str | None = None
    for index, word in enumerate(words):
        if word in ("-n", "--hostname") and index + 1 < len(words):
            found = words[index + 1]
        elif word.startswith("--hostname="):
            found = word.split("=", 1)[1]
        elif word.startswith("-n") and len(word) > 2 and not word.startswith("--"):
            found = word[2:]
    return found


def adopted_hazards(pod_template: Mapping[str, Any], spec: WorkerPoolSpec) -> list[str]:
    """What an adopted Deployment's pod template lacks for safe scale-in."""
    hazards: list[str] = []
    pod = pod_template.get("spec") or {}
    grace = pod.get("terminationGracePeriodSeconds")
    grace = DEFAULT_TERMINATION_GRACE if grace is None else int(grace)
    wanted = spec.shutdown.grace_period_seconds
    if grace < wanted:
        hazards.append(
            f"the Deployment's terminationGracePeriodSeconds ({grace}) is shorter than "
            f"shutdown.gracePeriodSeconds ({wanted}): a worker removed mid-task is killed "
            f"after {grace} s; set it on the Deployment's pod template"
        )
    containers = [c for c in pod.get("containers") or [] if _is_worker(_argv(c))]
    for container in containers:
        name = node_name_of(container)
        if name is not None and name not in ADDRESSABLE_NAMES:
            hazards.append(
                f"container {container.get('name')!r} names its workers {name!r}: idle-first "
                "scale-in asks worker@<pod name>; start them with -n worker@%h"
            )
    return hazards


# ----------------------------------------------------------------------------- observed


def _count(items: Iterable[object]) -> int:
    return sum(1 for _ in items)


def _observed_hazards(spec: WorkerPoolSpec, facts: WorkerFacts) -> list[str]:
    hazards: list[str] = []
    answered = facts.answered
    total = len(answered)
    early = [w for w in answered if not w.acks_late and not w.integration]
    if early:
        hazards.append(
            f"{_count(early)} of {total} workers run early acks (task_acks_late is false) "
            "without Tide's integration: a running task is invisible to the broker, so "
            "the pool may be shrunk under it, and lost if its worker is killed; set "
            "task_acks_late = True or install the integration (tide_celery.install)"
        )
    prefetching = sorted(
        {w.prefetch_multiplier for w in answered if w.prefetch_multiplier != 1}
        if not all(w.prefetch_disabled for w in answered)
        else set()
    )
    if prefetching:
        shown = ", ".join(str(m) for m in prefetching)
        hazards.append(
            f"workers prefetch {shown} tasks per slot (worker_prefetch_multiplier): a "
            "stopping worker holds tasks it has not started until it exits; set it to 1"
        )
    short = sorted(
        {w.concurrency for w in answered if w.concurrency and w.concurrency < spec.concurrency}
    )
    if short:
        shown = ", ".join(str(c) for c in short)
        hazards.append(
            f"workers run {shown} slots each, the pool declares {spec.concurrency} "
            "(spec.concurrency): the policy counts more running tasks per worker than they "
            "hold and may remove busy ones; make them agree"
        )
    if facts.silent and not answered:
        hazards.append(
            f"no worker answered as worker@<pod name> ({len(facts.silent)} asked): "
            "idle-first scale-in cannot tell busy workers from idle ones; start them with "
            "-n worker@%h or install Tide's integration, on the broker and key prefix the "
            "operator uses (CELERY_BROKER_URL, TIDE_BROKER_TRANSPORT_OPTIONS)"
        )
    return hazards


def _declared_hazards(spec: WorkerPoolSpec) -> list[str]:
    hazards: list[str] = []
    if not spec.worker.acks_late:
        hazards.append(
            "worker.acksLate is false: a task acknowledged before it runs is lost if "
            "its worker is killed"
        )
    if spec.worker.prefetch_multiplier != 1:
        hazards.append(
            f"worker.prefetchMultiplier is {spec.worker.prefetch_multiplier}: a stopping "
            "worker holds tasks it has not started until its grace period ends"
        )
    return hazards


def scale_in_hazards(
    spec: WorkerPoolSpec,
    *,
    pod_template: Mapping[str, Any] | None = None,
    facts: WorkerFacts | None = None,
) -> tuple[str, ...]:
    """Reasons why removing a worker could kill or delay a task, for ``SafeScaleIn``.

    ``pod_template``: an adopted Deployment's (None for an owned pool, whose template Tide
    builds right). ``facts``: what the workers answered; without any answer the spec's
    declared ``worker`` settings stand in for them.
    """
    hazards: list[str] = []
    longest = spec.shutdown.longest_task_seconds
    if longest is not None and spec.shutdown.grace_period_seconds < longest:
        hazards.append(
            f"shutdown.gracePeriodSeconds ({spec.shutdown.grace_period_seconds}) is "
            f"shorter than shutdown.longestTaskSeconds ({longest}): a worker removed "
            "mid-task is killed before the task ends"
        )
    if pod_template is not None:
        hazards += adopted_hazards(pod_template, spec)
    if facts is not None and (facts.answered or facts.silent):
        hazards += _observed_hazards(spec, facts)
        if not facts.answered:
            hazards += _declared_hazards(spec)
    else:
        hazards += _declared_hazards(spec)
    return tuple(hazards)


def workers_status(facts: WorkerFacts | None) -> dict[str, Any] | None:
    """``status.workers``: what the pool's workers run, summarised (None: nobody answered)."""
    if facts is None or not facts.answered:
        return None
    answered = facts.answered
    concurrencies = [w.concurrency for w in answered if w.concurrency is not None]
    result: dict[str, Any] = {
        "answered": len(answered),
        # The weakest worker decides what scale-in may lose.
        "acksLate": all(w.acks_late for w in answered),
        "prefetchMultiplier": max(w.prefetch_multiplier for w in answered),
        "integration": all(bool(w.integration) for w in answered),
    }
    if concurrencies:
        result["concurrency"] = min(concurrencies)
    return result
