"""skaffold.yaml is valid for skaffold/v4beta14 and deploys what the chart renders."""

from __future__ import annotations

import json

import jsonschema
import yaml
from chart_render import REPO, Render

# The team's shared copy when it sits beside the clone (as in CI), else the one the project
# carries, so a newcomer's clone with nothing beside it validates too.
_SCHEMA_NAME = "skaffold-v4beta14.json"
_SHARED = REPO.parent / "shared" / "schemas" / _SCHEMA_NAME
SCHEMA = _SHARED if _SHARED.is_file() else REPO / "tests" / "charts" / "schemas" / _SCHEMA_NAME


def config() -> dict:
    return yaml.safe_load((REPO / "skaffold.yaml").read_text())


def test_skaffold_yaml_matches_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config()), key=str)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_skaffold_sets_the_built_image_and_forwards_real_services(
    rendered: dict[str, Render],
) -> None:
    cfg = config()
    assert cfg["apiVersion"] == "skaffold/v4beta14"
    (artifact,) = cfg["build"]["artifacts"]
    (release,) = cfg["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/tide"
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == "{{.IMAGE_REPO_" + artifact["image"] + "}}"
    assert templates["image.tag"].startswith("{{.IMAGE_TAG_" + artifact["image"])
    services = {s["metadata"]["name"]: s for s in rendered["default"].kind("Service")}
    forwards = {f["resourceName"]: f for f in cfg["portForward"]}
    for name in ("tide-api", "tide-flower"):
        ports = {p["port"] for p in services[name]["spec"]["ports"]}
        assert forwards[name]["port"] in ports
    assert any("grafana" in name for name in forwards)
    assert {p["name"] for p in cfg["profiles"]} == {"local", "manifests"}
