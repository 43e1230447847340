"""Dashboards parse, and every dashboard and alert query names only series Tide exports.

The list of exported series is built from the code that registers them (the API's
metrics module, the exporter's collector, the operator's metrics module, and the installed
Flower's sources), never copied by hand, so renaming a metric breaks this test rather than
a dashboard in production.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import flower
import pytest
from chart_render import CHART, REPO, Render

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
SOURCES = [
    REPO / "app" / "tide" / "health" / "metrics.py",
    REPO / "app" / "tide" / "exporter" / "collector.py",
    REPO / "app" / "tide_contract" / "series.py",
    REPO / "operator" / "tide_operator" / "edge" / "metrics.py",
    *sorted(Path(flower.__file__).parent.rglob("*.py")),
]
# Series every Prometheus has for each target it scrapes.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
# name -> the series a registered metric of that type exposes.
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
}


def _kind(func: ast.expr) -> str | None:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    for kind in SUFFIXES:
        # Counter, PrometheusCounter, CounterMetricFamily, GaugeMetricFamily, ...
        if name.removesuffix("MetricFamily").endswith(kind):
            return kind
    return None


def exported_series() -> set[str]:
    """Series names registered in the sources, with the suffixes their types expose."""
    series: set[str] = set()
    trees = [ast.parse(path.read_text()) for path in SOURCES]
    # Names defined in one source are used in another (the exporter imports the series'
    # names from tide_contract), so constants are gathered across all of them.
    constants = {
        t.id: node.value.value
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name) and isinstance(node.value.value, str)
    }
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args and (kind := _kind(node.func))):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
            elif isinstance(first, ast.Name) and first.id in constants:
                name = constants[first.id]
            else:
                continue
            if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
                continue
            base = name.removesuffix("_total") if kind == "Counter" else name
            series.update(base + suffix for suffix in SUFFIXES[kind])
    return series


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads (labels, functions and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word) or word.startswith("$"):
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [t["expr"] for t in inner.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # The series selector may hold commas inside its braces.
            found = re.search(r"label_values\(((?:[^,{]|\{[^}]*\})+),", query["query"])
            if found:
                queries.append(found.group(1))
    return queries


def test_exported_series_are_found_in_every_source() -> None:
    series = exported_series()
    # One known name per source proves each was read.
    assert {"tide_http_requests_total", "celery_queue_length", "flower_events_total"} <= series
    assert "tide_workerpool_scale_events_total" in series
    assert "tide_operator_reconcile_duration_seconds_bucket" in series


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_parses_and_queries_exported_series(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries(dashboard)
    assert queries
    unknown = set().union(*(metric_names(q) for q in queries)) - exported_series()
    assert unknown == set(), f"{path.name} queries series nobody exports: {sorted(unknown)}"


def test_alerts_query_exported_series(rendered: dict[str, Render]) -> None:
    (rule,) = rendered["production"].kind("PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    unknown = set().union(*(metric_names(e) for e in exprs)) - exported_series() - PROMETHEUS_SERIES
    assert unknown == set()


def test_autoscaler_dashboard_shows_what_the_issue_asks() -> None:
    dashboard = json.loads((CHART / "files" / "dashboards" / "tide-autoscaler.json").read_text())
    names = set().union(*(metric_names(q) for q in dashboard_queries(dashboard)))
    # Desired vs current and ready, the observations acted on, scale events, fallback and
    # paused.
    assert {
        "tide_workerpool_desired_replicas",
        "tide_workerpool_current_replicas",
        "tide_workerpool_ready_replicas",
        "tide_workerpool_observed_waiting",
        "tide_workerpool_observed_oldest_age_seconds",
        "tide_workerpool_scale_events_total",
        "tide_workerpool_fallback_active",
        "tide_workerpool_paused",
    } <= names


def test_metric_name_extraction() -> None:
    # Each row: a PromQL shape and the series it reads.
    assert metric_names('sum by (queue_name) (celery_queue_length{queue_name=~"$queue"})') == {
        "celery_queue_length"
    }
    assert metric_names(
        "histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))"
    ) == {"x_bucket"}
    assert metric_names('max(up{job="a"}) == 0 or absent(up{job="a"})') == {"up"}
    assert metric_names("a > on(ns) group_left b") == {"a", "b"}
