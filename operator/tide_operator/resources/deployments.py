"""Pure builders for the worker Deployment a WorkerPool owns, and the safe scale-in plan.

``build_worker_deployment(pool)`` returns the whole desired Deployment as a dict; the
operator creates it, or patches its pod template when ``template_hash`` differs from the
hash recorded on the live object (so an unchanged spec never costs a write, and a changed
one rolls the pods). It never carries ``spec.replicas`` unless asked: the replica count
belongs to the scaler, and re-applying a template must not reset it.

The pod is the team's: their image, command and args, env, security contexts, volumes,
init containers and probes come from ``template`` as written. Tide fills in only what
scale-in rests on, and the defaults the template may override:

* at the end of the command line: the queues, the concurrency, the prefetch multiplier
  and the Celery node name ``worker@$(POD_NAME)`` (the pod's name from the downward API),
  so the operator can ask exactly this pool's workers what they hold;
* ``terminationGracePeriodSeconds`` from the spec's shutdown grace: on SIGTERM Celery stops
  consuming and finishes its running tasks (warm shutdown) within it;
* a restricted security context and an emptyDir at /tmp, each overridable (an image whose
  ``USER`` is a name needs ``runAsUser``; an app that writes beside its code needs a
  writable root filesystem);
* a liveness probe that pings the worker's own node through the workers' own app
  (``celery -A <app> inspect ping``): the app's broker and key layout, never Tide's. Celery
  answers remote control from the main process while the pool's children run tasks, so a
  busy worker still answers; the thresholds are generous because a restart would cost
  running tasks, which is the one thing the probe must never do for a slow broker. When
  the template replaces the command without naming ``app``, Tide cannot know which app to
  ping, and adds none rather than a probe that fails (as one of Tide's own app once
  restarted a team's pods every few minutes).

``plan_deletion_costs`` turns per-pod busy counts into
``controller.kubernetes.io/pod-deletion-cost`` values, so when ``spec.replicas`` drops the
ReplicaSet controller removes idle pods first.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tide_operator.resources.spec import API_VERSION, KIND, WorkerPool, WorkerTemplate
from tide_operator.resources.status import Replicas

__all__ = [
    "CORDONED_ANNOTATION",
    "DELETION_COST_ANNOTATION",
    "LABEL_POOL",
    "TEMPLATE_HASH_ANNOTATION",
    "UNKNOWN_BUSY_COST",
    "ConsolidationPlan",
    "DeletionPlan",
    "PodLoad",
    "build_worker_deployment",
    "deployment_name",
    "deployment_replicas",
    "plan_consolidation",
    "plan_deletion_costs",
    "pod_labels",
    "probe_app",
    "selector_labels",
    "template_hash",
    "worker_command",
    "worker_flags",
    "worker_hostname",
]

LABEL_POOL: Final = "tide.dev/workerpool"
TEMPLATE_HASH_ANNOTATION: Final = "tide.dev/template-hash"
DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
# A pod that did not answer may be busy: it must rank after every pod known to be idle,
# and after any plausible busy count, so it is never removed before one we know is free.
UNKNOWN_BUSY_COST: Final = 1_000_000
# A worker told to stop consuming (``shutdown.consolidate``) carries this annotation until it
# is removed; the operator finds the pool's cordoned workers by it after a restart too.
CORDONED_ANNOTATION: Final = "tide.dev/cordoned"
# Deletion costs of consolidation: a cordoned worker that finished its tasks goes before
# anything else; one still finishing them goes after everything else.
_CORDONED_IDLE_COST: Final = -1
WORKER_CONTAINER: Final = "worker"
HOSTNAME_PREFIX: Final = "worker@"
#: The downward-API variable holding the pod's name, in every owned worker container.
POD_NAME_ENV: Final = "POD_NAME"
TMP_VOLUME: Final = "tmp"
#: Tide's reference app, which Tide's image runs when the template names no other.
TIDE_APP: Final = "tide"


def deployment_name(pool: WorkerPool) -> str:
    """The owned Deployment's name (or the adopted one's, from ``scaleTargetRef``)."""
    ref = pool.spec.scale_target_ref
    return ref.name if ref is not None else f"{pool.name}-workers"


def worker_hostname(pod_name: str) -> str:
    """The Celery node name of the worker running in ``pod_name``."""
    return f"{HOSTNAME_PREFIX}{pod_name}"


def selector_labels(pool: WorkerPool) -> dict[str, str]:
    # Immutable on a Deployment, so only what never changes for a pool: its name.
    return {"app.kubernetes.io/name": "tide-worker", LABEL_POOL: pool.name}


def pod_labels(pool: WorkerPool) -> dict[str, str]:
    template = pool.spec.template
    extra = dict(template.labels) if template is not None else {}
    return {
        **extra,
        **selector_labels(pool),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "tide",
        "app.kubernetes.io/managed-by": "tide-operator",
    }


def worker_flags(pool: WorkerPool) -> list[str]:
    """What Tide appends to every owned worker's command line: queues, slots, name, prefetch."""
    spec = pool.spec
    return [
        "-Q",
        ",".join(spec.queues),
        "-c",
        str(spec.concurrency),
        # The pod's name through the downward API (POD_NAME, expanded by the kubelet), not
        # Celery's %h: a pod's hostname can differ from its name (``hostname``,
        # ``setHostnameAsFQDN``), and the operator addresses ``worker@<pod name>``.
        "-n",
        f"{HOSTNAME_PREFIX}$({POD_NAME_ENV})",
        # The spec's declared prefetch is enforced on the workers the operator runs, so the
        # safety check on the status describes what actually runs.
        f"--prefetch-multiplier={spec.worker.prefetch_multiplier}",
        # Without gossip and mingle a worker starts faster and a large pool does not
        # flood the broker with heartbeats between workers that never talk to each other.
        "--without-gossip",
        "--without-mingle",
    ]


def worker_command(pool: WorkerPool) -> tuple[list[str] | None, list[str]]:
    """The worker container's (command, args); command ``None`` keeps the image's entrypoint.

    The team's ``command`` and ``args`` come first, as they would in their own Deployment;
    Tide appends its flags and ``extraArgs`` at the end of the command line, where Celery's
    last-one-wins options make them the ones in force. Without either, ``app`` gives
    ``celery -A <app> worker`` and Tide's image gives ``tide worker``.
    """
    template = pool.spec.template
    assert template is not None  # only owned pools get a Deployment built
    command: list[str] | None = list(template.command) or None
    base = list(template.args)
    if command is None and not base:
        if template.app is not None:
            command, base = ["celery"], ["-A", template.app, "worker"]
        else:
            base = ["worker"]  # Tide's image: its entrypoint is ``tide``
    return command, [*base, *worker_flags(pool), *template.extra_args]


def probe_app(pool: WorkerPool) -> str | None:
    """The Celery app the liveness probe pings through, or ``None`` when Tide cannot know it."""
    template = pool.spec.template
    assert template is not None
    if template.app is not None:
        return template.app
    # No app named: Tide's own image runs Tide's app, unless the team's command replaced it.
    return None if (template.command or template.args) else TIDE_APP


def _liveness_probe(app: str) -> dict[str, Any]:
    # Through a shell for $POD_NAME (exec probes get no $(VAR) expansion); the app named is
    # the workers' own, so the ping uses their broker and key layout, never Tide's.
    ping = (
        f"exec celery -A {shlex.quote(app)} inspect ping "
        f'--destination "{HOSTNAME_PREFIX}${POD_NAME_ENV}" --timeout 10'
    )
    return {
        "exec": {"command": ["sh", "-c", ping]},
        "initialDelaySeconds": 60,
        "periodSeconds": 60,
        "timeoutSeconds": 30,
        # Five minutes of silence, not one missed ping: a restart kills running tasks.
        "failureThreshold": 5,
    }


# Defaults the template's securityContext / podSecurityContext override key by key: the
# restricted Pod Security Standard, which Tide's image meets as it is.
CONTAINER_SECURITY: Final[Mapping[str, Any]] = {
    "allowPrivilegeEscalation": False,
    # The image writes only under /tmp (TMPDIR), mounted below as an emptyDir.
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: Final[Mapping[str, Any]] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _mounts_tmp(template: WorkerTemplate) -> bool:
    return any(
        m.get("mountPath", "").rstrip("/") == "/tmp" or m.get("name") == TMP_VOLUME
        for m in template.volume_mounts
    ) or any(v.get("name") == TMP_VOLUME for v in template.volumes)


def _pod_spec(pool: WorkerPool) -> dict[str, Any]:
    template = pool.spec.template
    assert template is not None  # only owned pools get a Deployment built
    command, args = worker_command(pool)
    own_tmp = not _mounts_tmp(template)
    container: dict[str, Any] = {"name": WORKER_CONTAINER, "image": template.image}
    if command is not None:
        container["command"] = command
    container["args"] = args
    if template.working_dir is not None:
        container["workingDir"] = template.working_dir
    container["env"] = [
        # First, so the team's variables can refer to it as $(POD_NAME).
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TIDE_WORKERPOOL", "value": pool.name},
        *[dict(e) for e in template.env],
    ]
    if template.env_from:
        container["envFrom"] = [dict(e) for e in template.env_from]
    if template.image_pull_policy is not None:
        container["imagePullPolicy"] = template.image_pull_policy
    if template.resources is not None:
        container["resources"] = dict(template.resources)
    if template.liveness_probe is not None:
        container["livenessProbe"] = dict(template.liveness_probe)
    elif (app := probe_app(pool)) is not None:
        container["livenessProbe"] = _liveness_probe(app)
    if template.readiness_probe is not None:
        container["readinessProbe"] = dict(template.readiness_probe)
    if template.startup_probe is not None:
        container["startupProbe"] = dict(template.startup_probe)
    container["securityContext"] = {**CONTAINER_SECURITY, **(template.security_context or {})}
    mounts = [{"name": TMP_VOLUME, "mountPath": "/tmp"}] if own_tmp else []
    container["volumeMounts"] = [*mounts, *[dict(m) for m in template.volume_mounts]]

    spec: dict[str, Any] = {}
    if template.init_containers:
        spec["initContainers"] = [dict(c) for c in template.init_containers]
    spec["containers"] = [container]
    spec["terminationGracePeriodSeconds"] = pool.spec.shutdown.grace_period_seconds
    spec["securityContext"] = {**POD_SECURITY, **(template.pod_security_context or {})}
    # Workers need no Kubernetes API access unless the template says so.
    spec["automountServiceAccountToken"] = template.automount_service_account_token
    volumes = [{"name": TMP_VOLUME, "emptyDir": {}}] if own_tmp else []
    spec["volumes"] = [*volumes, *[dict(v) for v in template.volumes]]
    if template.service_account_name is not None:
        spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = [dict(t) for t in template.tolerations]
    if template.affinity is not None:
        spec["affinity"] = dict(template.affinity)
    if template.topology_spread_constraints:
        spec["topologySpreadConstraints"] = [dict(t) for t in template.topology_spread_constraints]
    if template.priority_class_name is not None:
        spec["priorityClassName"] = template.priority_class_name
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [dict(s) for s in template.image_pull_secrets]
    return spec


def _pod_template(pool: WorkerPool) -> dict[str, Any]:
    template = pool.spec.template
    annotations = dict(template.annotations) if template is not None else {}
    return {
        "metadata": {"labels": pod_labels(pool), "annotations": annotations},
        "spec": _pod_spec(pool),
    }


def template_hash(pool: WorkerPool) -> str:
    """A short digest of everything the operator sets on the Deployment except replicas."""
    desired = {"template": _pod_template(pool), "strategy": _strategy()}
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def _strategy() -> dict[str, Any]:
    # Surge rather than unavailability: a rollout starts new workers before old ones stop,
    # and the old ones finish their tasks within the grace period.
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}


def build_worker_deployment(pool: WorkerPool, *, replicas: int | None = None) -> dict[str, Any]:
    """The Deployment for an owned pool. ``replicas`` only when creating it."""
    if pool.spec.template is None:
        raise ValueError(f"WorkerPool {pool.name} adopts a Deployment; nothing to build")
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(pool)},
        "strategy": _strategy(),
        "revisionHistoryLimit": 3,
        "template": _pod_template(pool),
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(pool),
            "namespace": pool.namespace,
            "labels": {
                **selector_labels(pool),
                "app.kubernetes.io/component": "worker",
                "app.kubernetes.io/part-of": "tide",
                "app.kubernetes.io/managed-by": "tide-operator",
            },
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(pool)},
            # The garbage collector deletes the Deployment with its pool; ``controller``
            # marks it as ours, which is what the operator checks before touching it.
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": pool.name,
                    "uid": pool.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def is_owned_by(deployment: Mapping[str, Any], pool: WorkerPool) -> bool:
    """Whether ``deployment`` names ``pool`` as its controlling owner."""
    refs = deployment.get("metadata", {}).get("ownerReferences") or []
    return any(
        ref.get("kind") == KIND and ref.get("uid") == pool.uid and ref.get("controller")
        for ref in refs
    )


# ------------------------------------------------------------------------- safe scale-in


@dataclass(frozen=True, slots=True)
class PodLoad:
    """One worker pod: its name, the tasks it holds (None: did not answer), its cost now."""

    name: str
    busy: int | None
    current_cost: int | None = None


@dataclass(frozen=True, slots=True)
class DeletionPlan:
    """Annotations to write (only those that change) and how many pods are idle."""

    costs: Mapping[str, int]
    idle: int
    removable_idle: int


def _cost(load: PodLoad) -> int:
    # The ReplicaSet controller removes lower costs first: idle pods (0) go before busy
    # ones, and a busy pod's cost grows with what it holds, so the least busy go next.
    return UNKNOWN_BUSY_COST if load.busy is None else min(load.busy, UNKNOWN_BUSY_COST - 1)


def plan_deletion_costs(pods: Sequence[PodLoad], *, remove: int) -> DeletionPlan:
    """Deletion costs so that removing ``remove`` replicas takes idle pods first.

    Every pod is ranked, not only ``remove`` of them: the controller picks among all pods,
    and a stale low cost on a now-busy pod would make it a victim. Only annotations whose
    value changes are returned, so a steady pool costs no writes; a pod without the
    annotation already counts as cost 0, which is right for an idle one.
    """
    costs: dict[str, int] = {}
    idle = 0
    for load in pods:
        cost = _cost(load)
        if load.busy == 0:
            idle += 1
        current = load.current_cost if load.current_cost is not None else 0
        if cost != current:
            costs[load.name] = cost
    return DeletionPlan(costs=costs, idle=idle, removable_idle=min(idle, max(0, remove)))


def deployment_replicas(deployment: Mapping[str, Any]) -> Replicas:
    """What exists of a Deployment's pods, from the status its controllers wrote.

    ``status.replicas`` counts the pods of its ReplicaSets that exist and are not
    terminating (the ReplicaSet controller leaves those out), ``readyReplicas`` the ready
    ones; the API server omits both at zero. A ReplicaSet that cannot create pods raises
    ``ReplicaFailure`` (reason ``FailedCreate``, the admission error as message), which
    the Deployment controller copies onto the Deployment; a rollout stuck past its
    deadline turns ``Progressing`` False (``ProgressDeadlineExceeded``).
    """
    status: Mapping[str, Any] = deployment.get("status") or {}
    failure: tuple[str, str] | None = None
    for item in status.get("conditions") or []:
        kind, value = item.get("type"), item.get("status")
        reason, message = str(item.get("reason") or kind), str(item.get("message") or "")
        if kind == "ReplicaFailure" and value == "True":
            failure = (reason, message)
            break
        if kind == "Progressing" and value == "False" and failure is None:
            failure = (reason, message)
    return Replicas(
        existing=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        failure=failure,
    )


# --------------------------------------------------------------------------- consolidation


@dataclass(frozen=True, slots=True)
class ConsolidationPlan:
    """How a consolidating pool moves to ``serving`` consuming workers (see below)."""

    # The Deployment's new spec.replicas: the consuming workers plus the cordoned busy ones.
    replicas: int
    # Busy workers to tell to stop consuming (cancel_consumer) and annotate.
    cordon: tuple[str, ...]
    # Cordoned workers to tell to consume again (add_consumer) and un-annotate.
    reopen: tuple[str, ...]
    # Idle workers the ReplicaSet is to remove (they get the lowest deletion cost).
    remove: tuple[str, ...]
    # Deletion-cost annotations that change.
    costs: Mapping[str, int]


def plan_consolidation(
    pods: Sequence[PodLoad], *, cordoned: frozenset[str], current: int, desired: int
) -> ConsolidationPlan:
    """Move a pool of ``current`` replicas (``cordoned`` among them) to ``desired`` consuming.

    Scale-in without cutting a task and without pinning: instead of deleting a busy worker
    (which then has only its grace period to finish) or keeping it (which keeps it taking
    new tasks, so a pool of heavy-tailed tasks never shrinks), a busy worker chosen for
    removal is told to stop consuming. It finishes what it runs, however long, takes
    nothing new, and is removed once idle. The plan, from the busy probe's counts:

    * cordoned workers that are idle now go (cost below every other pod);
    * growing: cordoned workers consume again first, busiest first (they are up); the rest
      are new pods;
    * shrinking: idle consuming workers go first; then the least busy are cordoned;
      workers that did not answer are neither (they may be starting: the ReplicaSet takes
      pods that are not ready first);
    * ``replicas`` = ``desired`` consuming + the cordoned workers still busy.
    """
    by_name = {p.name: p for p in pods}
    held = [n for n in cordoned if n in by_name]
    cordoned_idle = sorted(n for n in held if by_name[n].busy == 0)
    cordoned_busy = sorted(
        (n for n in held if by_name[n].busy != 0), key=lambda n: (-(by_name[n].busy or 0), n)
    )
    serving = max(0, current - len(held))
    consuming = [p for p in pods if p.name not in cordoned]
    reopen: list[str] = []
    cordon: list[str] = []
    remove = list(cordoned_idle)
    if desired > serving:
        # Up and warm: the busiest first, then idle ones, before any new pod.
        reopen = (cordoned_busy + cordoned_idle)[: desired - serving]
        remove = [n for n in cordoned_idle if n not in reopen]
    elif desired < serving:
        surplus = serving - desired
        idle = sorted(p.name for p in consuming if p.busy == 0)
        remove += idle[:surplus]
        surplus -= min(surplus, len(idle))
        busy = sorted((p for p in consuming if p.busy), key=lambda p: (p.busy or 0, p.name))
        cordon = [p.name for p in busy[:surplus]]
    staying = len([n for n in cordoned_busy if n not in reopen]) + len(cordon)
    costs: dict[str, int] = {}
    gone = set(remove)
    held_back = (set(cordoned_busy) - set(reopen)) | set(cordon)
    for load in pods:
        if load.name in gone:
            cost = _CORDONED_IDLE_COST if load.name in cordoned else 0
        elif load.name in held_back:
            cost = UNKNOWN_BUSY_COST
        else:
            cost = _cost(load)
        if cost != (load.current_cost if load.current_cost is not None else 0):
            costs[load.name] = cost
    return ConsolidationPlan(
        replicas=desired + staying,
        cordon=tuple(cordon),
        reopen=tuple(reopen),
        remove=tuple(remove),
        costs=costs,
    )
