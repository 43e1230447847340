"""Pure builders for the worker Deployment a WorkerPool owns, and the safe scale-in plan.

``build_worker_deployment(pool)`` returns the whole desired Deployment as a dict; the
operator creates it, or patches its pod template when ``template_hash`` differs from the
hash recorded on the live object (so an unchanged spec never costs a write, and a changed
one rolls the pods). It never carries ``spec.replicas`` unless asked: the replica count
belongs to the scaler, and re-applying a template must not reset it.

Safe scale-in rests on three things decided here:

* the worker command gives every pod a Celery node name ``worker@<pod name>`` (Celery's
  ``%h`` is the pod's hostname), so the operator can ask exactly this pool's workers what
  they hold;
* ``terminationGracePeriodSeconds`` is the spec's shutdown grace: on SIGTERM Celery stops
  consuming and finishes its running tasks (warm shutdown) within it;
* ``plan_deletion_costs`` turns per-pod busy counts into
  ``controller.kubernetes.io/pod-deletion-cost`` values, so when ``spec.replicas`` drops the
  ReplicaSet controller removes idle pods first.

The liveness probe pings the worker's own node through the broker. Celery answers remote
control from the main process while the pool's children run tasks, so a busy worker still
answers; the thresholds are generous because a restart would cost running tasks, which is
the one thing the probe must never do for a slow broker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tide_operator.resources.spec import API_VERSION, KIND, WorkerPool

__all__ = [
    "DELETION_COST_ANNOTATION",
    "LABEL_POOL",
    "TEMPLATE_HASH_ANNOTATION",
    "UNKNOWN_BUSY_COST",
    "DeletionPlan",
    "PodLoad",
    "build_worker_deployment",
    "deployment_name",
    "plan_deletion_costs",
    "pod_labels",
    "selector_labels",
    "template_hash",
    "worker_command",
    "worker_hostname",
]

LABEL_POOL: Final = "tide.dev/workerpool"
TEMPLATE_HASH_ANNOTATION: Final = "tide.dev/template-hash"
DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
# A pod that did not answer may be busy: it must rank after every pod known to be idle,
# and after any plausible busy count, so it is never removed before one we know is free.
UNKNOWN_BUSY_COST: Final = 1_000_000
WORKER_CONTAINER: Final = "worker"
HOSTNAME_PREFIX: Final = "worker@"


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


def worker_command(pool: WorkerPool) -> list[str]:
    """``tide worker`` arguments: queues, concurrency, node name, prefetch."""
    spec = pool.spec
    args = [
        "worker",
        "-Q",
        ",".join(spec.queues),
        "-c",
        str(spec.concurrency),
        "-n",
        f"{HOSTNAME_PREFIX}%h",
        # The spec's declared prefetch is enforced on the workers the operator runs, so the
        # safety check on the status describes what actually runs.
        f"--prefetch-multiplier={spec.worker.prefetch_multiplier}",
        # Without gossip and mingle a worker starts faster and a large pool does not
        # flood the broker with heartbeats between workers that never talk to each other.
        "--without-gossip",
        "--without-mingle",
    ]
    if spec.template is not None:
        args += list(spec.template.extra_args)
    return args


def _liveness_probe() -> dict[str, Any]:
    return {
        "exec": {
            "command": [
                "sh",
                "-c",
                'exec celery -A tide inspect ping --destination "worker@$HOSTNAME" --timeout 10',
            ]
        },
        "initialDelaySeconds": 60,
        "periodSeconds": 60,
        "timeoutSeconds": 30,
        # Five minutes of silence, not one missed ping: a restart kills running tasks.
        "failureThreshold": 5,
    }


def _pod_spec(pool: WorkerPool) -> dict[str, Any]:
    template = pool.spec.template
    assert template is not None  # only owned pools get a Deployment built
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": template.image,
        "args": worker_command(pool),
        "env": [
            {"name": "TIDE_WORKERPOOL", "value": pool.name},
            *[dict(e) for e in template.env],
        ],
        "livenessProbe": _liveness_probe(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            # The image writes only under /tmp (TMPDIR), mounted below as an emptyDir.
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if template.image_pull_policy is not None:
        container["imagePullPolicy"] = template.image_pull_policy
    if template.env_from:
        container["envFrom"] = [dict(e) for e in template.env_from]
    if template.resources is not None:
        container["resources"] = dict(template.resources)
    spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": pool.spec.shutdown.grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Workers need no Kubernetes API access.
        "automountServiceAccountToken": False,
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if template.service_account_name is not None:
        spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = [dict(t) for t in template.tolerations]
    if template.affinity is not None:
        spec["affinity"] = dict(template.affinity)
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
