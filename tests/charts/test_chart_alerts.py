"""The chart's alerts: valid for Prometheus, firing when they should (promtool), linked.

Rules come from the PrometheusRule the chart renders, so what is tested is what ships.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import Render

HERE = Path(__file__).parent


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is missing: apt-get install prometheus", pytrace=False)
    return found


def rule_groups(render: Render) -> list[dict[str, Any]]:
    (rule,) = render.kind("PrometheusRule")
    return rule["spec"]["groups"]


def test_rules_pass_promtool_check(rendered: dict[str, Render], tmp_path: Path) -> None:
    for scenario in ("production", "rabbitmq"):
        path = tmp_path / f"{scenario}.yaml"
        path.write_text(yaml.safe_dump({"groups": rule_groups(rendered[scenario])}))
        result = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # promtool 2.42 reports duplicate rules (same name, same labels) and still exits 0.
        assert "duplicate rule" not in result.stdout + result.stderr, result.stdout


def test_alerts_fire_as_specified(rendered: dict[str, Render], tmp_path: Path) -> None:
    groups = copy.deepcopy(rule_groups(rendered["production"]))
    for group in groups:
        for rule in group["rules"]:
            # Annotations are checked below; promtool would demand each text verbatim.
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(HERE / "promtool" / "tide_alerts_test.yaml", tmp_path / "tests.yaml")
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_explains_itself_and_links_a_dashboard(rendered: dict[str, Render]) -> None:
    alerts = [r for g in rule_groups(rendered["production"]) for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert names == {
        "TideQueueWaitAboveTarget",
        "TideQueueWaitAboveDefault",
        "TideQueueBacklog",
        "TideQueueStalled",
        "TideWorkerPoolAtMaxWithGrowingBacklog",
        "TideWorkerPoolBelowDesired",
        "TideWorkerPoolFallbackActive",
        "TideWorkerPoolMetricsUnavailable",
        "TideHighTaskFailureRate",
        "TideExporterDown",
        "TideExporterBrokerUnreachable",
        "TideOperatorDown",
    }
    for alert in alerts:
        annotations = alert["annotations"]
        assert annotations["summary"], alert["alert"]
        assert annotations["description"], alert["alert"]
        assert annotations["dashboard_url"].startswith(
            (
                "https://grafana.example.com/d/tide-overview/",
                "https://grafana.example.com/d/tide-autoscaler/",
            )
        ), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
