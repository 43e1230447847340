"""The kubelet stand-in of the image's tests: what it makes of a pod spec (no podman)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_pods import Namespace, container_env, run_argv

NS = Namespace(
    name="tide",
    config_maps={"cfg": {"A": "from-configmap", "B": "configmap-b"}},
    secrets={"sec": {"pw": "s3cret"}},
    services=[
        {
            "metadata": {"name": "tide-exporter"},
            "spec": {"ports": [{"name": "metrics", "port": 9808}]},
        }
    ],
)


@pytest.mark.parametrize(
    ("env", "name", "expected"),
    [
        # A secretKeyRef resolves from the Secret, and $(VAR) sees earlier entries.
        (
            [
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                {"name": "URL", "value": "redis://:$(PW)@redis:6379/0"},
            ],
            "URL",
            "redis://:s3cret@redis:6379/0",
        ),
        # A reference to a later or unknown variable stays as written, as in Kubernetes.
        ([{"name": "X", "value": "$(LATER)"}, {"name": "LATER", "value": "1"}], "X", "$(LATER)"),
        # $$ escapes a dollar.
        ([{"name": "X", "value": "$$(PW)"}], "X", "$(PW)"),
        # env overrides envFrom.
        ([{"name": "A", "value": "from-env"}], "A", "from-env"),
        # fieldRef reads the pod.
        (
            [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            "NS",
            "tide",
        ),
        # Service links: a variable named like a Service's port exists in every pod.
        ([], "TIDE_EXPORTER_PORT", "tcp://10.96.0.10:9808"),
    ],
)
def test_environment(env: list[dict[str, Any]], name: str, expected: str) -> None:
    container = {"envFrom": [{"configMapRef": {"name": "cfg"}}], "env": env}
    assert container_env(container, NS, pod_name="p")[name] == expected


def argv(pod: dict[str, Any], container: dict[str, Any], *, user: str = "10001:10001") -> list[str]:
    return run_argv(
        image="img",
        name="p",
        pod_spec=pod,
        container=container,
        env={"K": "v"},
        tmp_dir=Path("/t"),
        ports={8000: 4321},
        image_user=user,
        service_account=Path("/sa"),
    )


RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def test_restricted_container() -> None:
    out = argv(
        {
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "automountServiceAccountToken": False,
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
        {
            "args": ["worker", "$(K)"],
            "securityContext": RESTRICTED,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
        },
    )
    for flag in [
        "--user=10001:10001",
        "--group-add=10001",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--passwd=false",
        "--volume=/t:/tmp",
        "--cpus=0.5",
        f"--memory={256 * 2**20}",
        "--publish=127.0.0.1:4321:8000",
    ]:
        assert flag in out
    # No token mounted when the pod opts out; args expanded; the image's entrypoint kept.
    assert not any("serviceaccount" in a for a in out)
    assert out[-3:] == ["img", "worker", "v"]


def test_token_mounted_by_default() -> None:
    out = argv({}, {"command": ["sh", "-c"], "args": ["exit 0"]})
    assert "--volume=/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" in out
    assert out[-5:] == ["--entrypoint", "sh", "img", "-c", "exit 0"]


@pytest.mark.parametrize("user", ["tide", "0", ""])
def test_run_as_non_root_needs_a_numeric_non_zero_image_user(user: str) -> None:
    # The kubelet refuses these (CreateContainerConfigError); so does the stand-in.
    with pytest.raises(ValueError, match="runAsNonRoot"):
        argv({"securityContext": {"runAsNonRoot": True}}, {}, user=user)


def test_only_the_tmp_empty_dir_is_modelled() -> None:
    with pytest.raises(ValueError, match="only the /tmp emptyDir"):
        argv(
            {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}]},
            {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        )
