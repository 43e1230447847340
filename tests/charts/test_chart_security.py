"""Secure defaults: the restricted Pod Security Standard, resources, probes, and checkov.

The restricted profile is asserted on every pod the chart renders and on the worker pods
the operator builds from the rendered WorkerPools (through the operator's own builder).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import REPO, SCENARIOS, Render, pod_specs, worker_deployments

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SKIP_ANNOTATION = "checkov.io/skip"


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Violations of the Kubernetes "restricted" Pod Security Standard (latest)."""
    problems = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(flag)
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds}")
    if pod_sc.get("sysctls"):
        problems.append("sysctls")
    containers = spec["containers"] + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def skipped(obj: dict[str, Any]) -> set[str]:
    annotations = obj["metadata"].get("annotations", {})
    return {v.split("=", 1)[0] for k, v in annotations.items() if k.startswith(SKIP_ANNOTATION)}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_meets_the_restricted_profile(rendered: dict[str, Render], scenario: str) -> None:
    render = rendered[scenario]
    workloads = [o for o in render.objects if list(pod_specs(o))]
    workloads += worker_deployments(render)
    assert workloads
    for obj in workloads:
        for spec in pod_specs(obj):
            assert restricted_violations(spec) == [], obj["metadata"]["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_read_only_root_resources_and_probes(rendered: dict[str, Render], scenario: str) -> None:
    for obj in rendered[scenario].objects:
        for spec in pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            writable = {v["name"] for v in spec.get("volumes", [])}
            assert spec.get("automountServiceAccountToken") is (
                obj["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
            ), where
            for c in spec["containers"] + spec.get("initContainers", []):
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
                assert {"tmp"} <= writable, where  # /tmp is the writable place
                resources = c["resources"]
                assert resources["requests"], where
                assert resources["limits"], where
            for c in spec["containers"]:
                # Probes everywhere, except where a checkov skip explains their absence.
                if "CKV_K8S_8" not in skipped(obj):
                    assert "livenessProbe" in c, where
                if "CKV_K8S_9" not in skipped(obj):
                    assert "readinessProbe" in c, where


def test_checkov_finds_no_unexplained_failure(rendered: dict[str, Render], tmp_path: Path) -> None:
    checkov = REPO / ".venv-checkov" / "bin" / "checkov"
    if not checkov.exists():
        pytest.fail("checkov is not installed: run scripts/install-tools.sh", pytrace=False)
    for scenario, render in rendered.items():
        (tmp_path / f"{scenario}.yaml").write_text(yaml.safe_dump_all(render.objects))
    result = subprocess.run(
        [
            str(checkov),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--compact",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    failed = [
        (f["check_id"], f["resource"].split(".helm.sh")[0])
        for f in report["results"]["failed_checks"]
    ]
    assert failed == [], failed
    assert report["summary"]["passed"] > 0
    # Every skip names a check and says why (the chart's tide.checkovSkips helper).
    for render in rendered.values():
        for obj in render.objects:
            for key, value in obj["metadata"].get("annotations", {}).items():
                if key.startswith(SKIP_ANNOTATION):
                    check, _, reason = value.partition("=")
                    assert check.startswith("CKV"), (key, value)
                    assert len(reason) > 30, (key, value)
