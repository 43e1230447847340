"""manifests/ is the chart rendered (scripts/render-manifests.sh) and stays in sync with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from chart_render import REPO

MANIFESTS = REPO / "manifests"
# manifests/examples/ belongs to the operator's docs, not to the render.
OWN = ["namespace.yaml", "crds", "rbac.yaml", "operator.yaml", "tide.yaml", "kustomization.yaml"]


def files(root: Path) -> dict[str, str]:
    out = {}
    for name in OWN:
        path = root / name
        paths = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for p in paths:
            if p.exists():
                out[str(p.relative_to(root))] = p.read_text()
    return out


def test_manifests_match_a_fresh_render(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "render-manifests.sh"), str(tmp_path)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    fresh, checked_in = files(tmp_path), files(MANIFESTS)
    stale = sorted(k for k in fresh.keys() | checked_in.keys() if fresh.get(k) != checked_in.get(k))
    assert stale == [], f"manifests/ is out of date ({stale}): run scripts/render-manifests.sh"


def test_manifests_hold_what_users_without_helm_need() -> None:
    kinds = {}
    for name, text in files(MANIFESTS).items():
        if name == "kustomization.yaml":
            continue
        for obj in yaml.safe_load_all(text):
            kinds.setdefault(obj["kind"], []).append((name, obj["metadata"]["name"]))
    assert ("crds/workerpools.tide.dev.yaml", "workerpools.tide.dev") in kinds[
        "CustomResourceDefinition"
    ]
    assert {n for _, n in kinds["Deployment"]} >= {
        "tide-api",
        "tide-operator",
        "tide-exporter",
        "tide-flower",
    }
    assert ("rbac.yaml", "tide-operator") in kinds["Role"]
    assert kinds["Namespace"] == [("namespace.yaml", "tide")]
    ns = yaml.safe_load((MANIFESTS / "namespace.yaml").read_text())
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # No Secret: users create "tide" themselves; no Helm hook in plain YAML.
    assert "Secret" not in kinds
    for text in files(MANIFESTS).values():
        assert "helm.sh/hook" not in text
