"""The pure builders: the worker Deployment and the pod-deletion-cost plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tide_operator.resources.deployments import (
    UNKNOWN_BUSY_COST,
    PodLoad,
    build_worker_deployment,
    plan_deletion_costs,
    template_hash,
)
from tide_operator.resources.spec import WorkerPool

ROOT = Path(__file__).resolve().parents[3]


def pool(**spec: Any) -> WorkerPool:
    body: dict[str, Any] = {
        "queues": ["a", "b"],
        "concurrency": 3,
        "template": {"image": "tide:1", "env": [{"name": "X", "value": "1"}]},
        "metrics": {"exporter": {"url": "http://e:9808"}},
        "shutdown": {"gracePeriodSeconds": 900},
    }
    body.update(spec)
    return WorkerPool.from_body(
        {"metadata": {"name": "p", "namespace": "n", "uid": "u-1"}, "spec": body}
    )


def test_deployment_runs_the_pools_worker_command() -> None:
    d = build_worker_deployment(pool())
    pod = d["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "command" not in container  # Tide's image: its entrypoint is `tide`
    assert container["args"][:7] == ["worker", "-Q", "a,b", "-c", "3", "-n", "worker@$(POD_NAME)"]
    assert "--prefetch-multiplier=1" in container["args"]
    # The node name comes from the pod's own name, which the operator addresses.
    assert container["env"][0] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert pod["terminationGracePeriodSeconds"] == 900
    assert {"name": "X", "value": "1"} in container["env"]
    assert "replicas" not in d["spec"]  # the scaler owns replicas
    assert d["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert (
        d["spec"]["selector"]["matchLabels"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    )
    probe = container["livenessProbe"]
    # A busy worker still answers ping; a restart must need minutes of silence.
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 300
    assert "celery -A tide inspect ping" in probe["exec"]["command"][-1]


def test_template_hash_changes_only_with_the_template() -> None:
    base = template_hash(pool())
    assert template_hash(pool(maxReplicas=7)) == base  # scaling fields do not roll pods
    assert template_hash(pool(concurrency=4)) != base
    assert template_hash(pool(template={"image": "tide:2"})) != base


def test_adopted_pool_has_nothing_to_build() -> None:
    with pytest.raises(ValueError, match="adopts"):
        build_worker_deployment(pool(template=None, scaleTargetRef={"name": "d"}))


PLANS = [
    # Idle pods keep the implicit cost 0 (no write); busy pods rank by what they hold.
    ([PodLoad("a", 0), PodLoad("b", 2), PodLoad("c", 0)], {"b": 2}, 2),
    # A pod that did not answer ranks after every known one.
    ([PodLoad("a", None), PodLoad("b", 0)], {"a": UNKNOWN_BUSY_COST}, 1),
    # Costs already right cost no writes.
    ([PodLoad("a", 1, current_cost=1), PodLoad("b", 0, current_cost=0)], {}, 1),
    # A formerly busy pod that went idle is lowered back to 0.
    ([PodLoad("a", 0, current_cost=5)], {"a": 0}, 1),
]


@pytest.mark.parametrize(("loads", "costs", "idle"), PLANS)
def test_deletion_plan(loads: list[PodLoad], costs: dict[str, int], idle: int) -> None:
    plan = plan_deletion_costs(loads, remove=1)
    assert dict(plan.costs) == costs
    assert plan.idle == idle


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]


# ------------------------------------------------------------------ the team's own app

#: A team's worker pod, as it would be copied from the Deployment the team runs today:
#: the stock app's image and command, a named USER (so runAsUser), an app that writes
#: beside its code, a database proxy as a native sidecar, a config volume, probes,
#: scheduling and a private registry.
STOCK_TEMPLATE: dict[str, Any] = {
    "image": "registry.example.com/stockapp:1.4.2",
    "imagePullPolicy": "IfNotPresent",
    "app": "stockapp",
    "env": [
        {"name": "STOCKAPP_BROKER_URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "u"}}},
        {"name": "STOCKAPP_WORKER_NAME", "value": "worker@$(POD_NAME)"},
    ],
    "envFrom": [{"configMapRef": {"name": "stockapp-config"}}],
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "securityContext": {"readOnlyRootFilesystem": False},
    "podSecurityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
    "initContainers": [
        {
            "name": "db-proxy",
            "image": "registry.example.com/db-proxy:2",
            "restartPolicy": "Always",
            "args": ["--port=5432"],
        }
    ],
    "volumes": [{"name": "config", "configMap": {"name": "stockapp-files"}}],
    "volumeMounts": [{"name": "config", "mountPath": "/etc/stockapp", "readOnly": True}],
    "startupProbe": {
        "exec": {"command": ["test", "-f", "/etc/stockapp/ready"]},
        "periodSeconds": 5,
    },
    "labels": {"team": "orders"},
    "annotations": {"example.com/owner": "orders"},
    "serviceAccountName": "stockapp",
    "nodeSelector": {"pool": "workers"},
    "tolerations": [{"key": "spot", "operator": "Exists"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"team": "orders"}},
                    },
                }
            ]
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"team": "orders"}},
        }
    ],
    "priorityClassName": "batch",
    "imagePullSecrets": [{"name": "registry"}],
}


def stock_pool(**template: Any) -> WorkerPool:
    return pool(
        queues=["orders", "emails"],
        concurrency=4,
        template={**STOCK_TEMPLATE, **template},
        worker={"prefetchMultiplier": 1, "acksLate": True},
    )


def test_stock_app_template_runs_the_teams_worker_with_tides_flags_last() -> None:
    d = build_worker_deployment(stock_pool())
    pod = d["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == STOCK_TEMPLATE["image"]
    assert container["command"] == ["celery"]
    assert container["args"] == [
        "-A", "stockapp", "worker",
        "-Q", "orders,emails", "-c", "4", "-n", "worker@$(POD_NAME)",
        "--prefetch-multiplier=1", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    # The liveness probe pings the worker's own node through the team's app, not Tide's.
    ping = container["livenessProbe"]["exec"]["command"]
    assert ping[:2] == ["sh", "-c"]
    assert ping[2].startswith("exec celery -A stockapp inspect ping")
    assert '"worker@$POD_NAME"' in ping[2]
    assert container["startupProbe"] == STOCK_TEMPLATE["startupProbe"]
    # Tide's defaults, overridden key by key by the team's contexts.
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
    }
    assert pod["initContainers"] == STOCK_TEMPLATE["initContainers"]
    assert {"name": "config", "configMap": {"name": "stockapp-files"}} in pod["volumes"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["volumeMounts"][-1] == STOCK_TEMPLATE["volumeMounts"][0]
    assert container["envFrom"] == STOCK_TEMPLATE["envFrom"]
    names = [e["name"] for e in container["env"]]
    assert names == ["POD_NAME", "TIDE_WORKERPOOL", "STOCKAPP_BROKER_URL", "STOCKAPP_WORKER_NAME"]
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert pod[key] == STOCK_TEMPLATE[key], key
    assert pod["priorityClassName"] == "batch"
    assert pod["serviceAccountName"] == "stockapp"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 900
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "orders"
    assert labels["tide.dev/workerpool"] == "p"


COMMANDS = [
    # The app alone: celery -A <app> worker, and a probe through that app.
    ({"app": "proj.celery:app"}, ["celery"], ["-A", "proj.celery:app", "worker"], "proj.celery"),
    # An entrypoint that execs its arguments: the team's args first, Tide's flags after.
    (
        {"app": "proj", "command": ["/entrypoint.sh"], "args": ["celery", "-A", "proj", "worker"]},
        ["/entrypoint.sh"],
        ["celery", "-A", "proj", "worker"],
        "proj",
    ),
    # The whole command in `command`: Tide's flags are the arguments.
    ({"command": ["celery", "-A", "proj", "worker"]}, ["celery", "-A", "proj", "worker"], [], None),
    # Args alone keep the image's entrypoint; no app named, so no probe Tide could get right.
    ({"args": ["celery", "-A", "proj", "worker"]}, None, ["celery", "-A", "proj", "worker"], None),
    # Nothing: Tide's image, `tide worker`, probed through Tide's app.
    ({}, None, ["worker"], "tide"),
]


@pytest.mark.parametrize(("fields", "command", "head", "probe_app"), COMMANDS)
def test_command_args_and_probe(
    fields: dict[str, Any], command: list[str] | None, head: list[str], probe_app: str | None
) -> None:
    d = build_worker_deployment(pool(template={"image": "app:1", **fields}))
    container = d["spec"]["template"]["spec"]["containers"][0]
    assert container.get("command") == command
    assert container["args"][: len(head)] == head
    assert container["args"][len(head) : len(head) + 2] == ["-Q", "a,b"]
    probe = container.get("livenessProbe")
    if probe_app is None:
        assert probe is None
    else:
        assert probe["exec"]["command"][2].startswith(f"exec celery -A {probe_app.split(':')[0]}")


def test_a_teams_own_liveness_probe_and_tmp_volume_replace_tides() -> None:
    own_probe = {"exec": {"command": ["/healthcheck"]}, "periodSeconds": 30}
    d = build_worker_deployment(
        stock_pool(
            livenessProbe=own_probe,
            volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
            volumeMounts=[{"name": "scratch", "mountPath": "/tmp"}],
        )
    )
    pod = d["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"] == own_probe
    # One volume at /tmp, the team's: two mounts at one path would be refused.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"medium": "Memory"}}]


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_stock_app_deployment_is_valid_kubernetes(version: str) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kube = latest_version() if version == "latest" else version
    for built in (
        build_worker_deployment(stock_pool(), replicas=0),
        build_worker_deployment(pool()),
    ):
        # Strict: an unknown or misplaced key fails, as the API server would drop it.
        kubernetes_validate.validate(built, kube, strict=True)


def test_a_misspelt_pod_field_fails_kubernetes_validation() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    # The template's objects pass through as written: a typo reaches the Deployment, and
    # the schema (like the API server) refuses it there. This proves the check above bites.
    built = build_worker_deployment(stock_pool(securityContext={"runAsUsr": 1000}))
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsUsr"):
        kubernetes_validate.validate(built, latest_version(), strict=True)
