"""The Dockerfile against what the chart and the package say (no build needed)."""

from __future__ import annotations

import re
import tomllib

import yaml
from chart_render import CHART, REPO, pod_specs, template

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_every_port_the_chart_opens_on_the_image_is_exposed() -> None:
    # EXPOSE documents the image's ports; the operator's metrics port (9091) was missing.
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.M) for p in line.split()
    }
    opened = {
        port["containerPort"]
        for obj in template()
        for spec in pod_specs(obj)
        for container in spec["containers"]
        if container["image"].startswith("tide:")
        for port in container.get("ports") or []
    }
    assert opened <= exposed, f"not exposed: {sorted(opened - exposed)}"


def test_the_version_label_defaults_to_the_package_and_chart_version() -> None:
    (default,) = re.findall(r"^ARG VERSION=(\S+)$", DOCKERFILE, re.M)
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert default == package == chart


def test_no_builder_frontend_is_fetched_from_a_registry() -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image before it reads the file.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.M | re.I)
