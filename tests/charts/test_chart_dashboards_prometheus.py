"""Every dashboard panel, run on a real Prometheus, shows the true figure.

A known world is written as the scrapes would have stored it: Tide's exporter, Flower,
two API replicas and the operator (its pools' namespaces kept, as its monitor honours
labels) in namespace ``tide``; beside them a celery-exporter publishing the same
``celery_queue_length`` figures under its own job (and a queue only it knows), a second
Tide release in namespace ``other``, and a same-named pool in ``team-a``. Counters grow at
known rates and histograms fill known buckets for 20 minutes, at 15 s steps, so every
rate, ratio and quantile has one right answer. ``promtool tsdb create-blocks-from
openmetrics`` turns the samples into blocks, a real Prometheus opens them, and each
panel's query runs with the variables a person would pick (namespace ``tide``, all
queues, all tasks, all pools). The answer, rendered by the panel's legend, must equal the
expectation row for that panel: not double with celery-exporter beside, not summed across
API replicas, nothing from the other namespaces.

A panel without a row here fails the test, so a new panel comes with its true figure.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from chart_render import CHART

DASHBOARDS = {
    path.stem: json.loads(path.read_text())
    for path in (CHART / "files" / "dashboards").glob("*.json")
}
STEP = 15  # seconds between samples, as a 15 s scrape interval
SPAN = 20 * 60  # 20 minutes of history
RATE_INTERVAL = "2m"  # Grafana's $__rate_interval for a 15 s scrape at this zoom
VARIABLES = {
    "$namespace": "tide",
    "$queue": ".*",
    "$task": ".*",
    "$workerpool": ".*",
    "$__rate_interval": RATE_INTERVAL,
}

RESIZE, SLEEP = "tide.samples.resize", "tide.samples.sleep"
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Series:
    name: str
    labels: dict[str, str]
    value: float  # a gauge's value, or a counter's rate per second
    counter: bool = False


def target(job: str, instance: str, namespace: str) -> dict[str, str]:
    """The labels a scrape adds (Prometheus Operator: job, instance, namespace)."""
    return {"job": job, "instance": instance, "namespace": namespace}


def histogram(
    name: str, labels: dict[str, str], low: float, high: float, rate: float
) -> list[Series]:
    """A histogram whose observations all fall in (low, high], ``rate`` per second."""
    bounds = sorted({*BOUNDS, low, high})
    series = [
        Series(name + "_bucket", {**labels, "le": repr(b)}, rate if b >= high else 0.0, True)
        for b in bounds
    ]
    series.append(Series(name + "_bucket", {**labels, "le": "+Inf"}, rate, True))
    series.append(Series(name + "_count", labels, rate, True))
    series.append(Series(name + "_sum", labels, rate * (low + high) / 2, True))
    return series


def world() -> list[Series]:
    tide = target("tide-exporter", "10.0.0.5:9808", "tide")
    other = target("tide-exporter", "10.1.0.5:9808", "other")
    celery_exporter = target("celery-exporter", "10.0.0.9:9808", "tide")
    flower = target("tide-flower", "10.0.0.7:5555", "tide")
    apis = [target("tide-api", f"10.0.0.{n}:8000", "tide") for n in (2, 3)]
    operator = {"job": "tide-operator", "instance": "10.0.0.4:9100"}
    s: list[Series] = []
    # Tide's exporter: two queues.
    for queue, (waiting, age, inflight, scheduled, completed) in {
        "default": (100, 42, 8, 3, 2.5),
        "io": (5, 3, 1, 0, 0.5),
    }.items():
        q = {**tide, "queue_name": queue}
        s += [
            Series("celery_queue_length", q, waiting),
            Series("celery_queue_oldest_age_seconds", q, age),
            Series("celery_queue_inflight", q, inflight),
            Series("celery_queue_scheduled", q, scheduled),
            Series("celery_queue_completed_total", q, completed, True),
            Series("tide_exporter_queue_source_info", {**q, "source": "redis"}, 1),
        ]
        # celery-exporter reads the same broker: the same figure under its own job.
        s.append(Series("celery_queue_length", {**celery_exporter, "queue_name": queue}, waiting))
    s += [
        Series("celery_queue_length", {**celery_exporter, "queue_name": "legacy"}, 70),
        Series("celery_worker_up", {**celery_exporter, "hostname": "worker@a"}, 1),
        *histogram(
            "celery_task_runtime", {**celery_exporter, "name": RESIZE, "queue_name": "default"},
            0.25, 0.5, 2.0,
        ),
        Series("tide_exporter_up", tide, 1),
        Series("tide_exporter_stale", tide, 0),
        Series("tide_exporter_scrape_duration_seconds", tide, 0.004),
        Series("tide_exporter_broker_errors_total", {**tide, "error": "Refused"}, 0.1, True),
    ]  # fmt: skip
    # The integration's per-task counters.
    resize = {**tide, "queue_name": "default", "task": RESIZE}
    sleep = {**tide, "queue_name": "io", "task": SLEEP}
    s += [
        Series("tide_task_runs_total", {**resize, "state": "SUCCESS"}, 2.0, True),
        Series("tide_task_runs_total", {**resize, "state": "FAILURE"}, 0.5, True),
        Series("tide_task_runs_total", {**resize, "state": "RETRY"}, 0.1, True),
        Series("tide_task_runs_total", {**sleep, "state": "SUCCESS"}, 0.5, True),
        Series("tide_task_failures_total", {**resize, "exception": "ValueError"}, 0.3, True),
        Series("tide_task_failures_total", {**resize, "exception": "TimeoutError"}, 0.2, True),
        *histogram("tide_task_runtime_seconds", resize, 0.25, 0.5, 2.6),
        *histogram("tide_task_runtime_seconds", sleep, 5.0, 10.0, 0.5),
        *histogram("tide_task_wait_seconds", resize, 1.0, 2.5, 2.6),
        *histogram("tide_task_wait_seconds", sleep, 0.0, 0.005, 0.5),
    ]
    # A second Tide release: other figures, never on namespace tide's panels.
    o = {**other, "queue_name": "default"}
    s += [
        Series("tide_exporter_up", other, 1),
        Series("tide_exporter_stale", other, 1),
        Series("celery_queue_length", o, 7),
        Series("celery_queue_oldest_age_seconds", o, 900),
        Series("celery_queue_inflight", o, 70),
        Series("celery_queue_scheduled", o, 70),
        Series("celery_queue_completed_total", o, 9.0, True),
        Series("tide_exporter_queue_source_info", {**o, "source": "redis"}, 1),
        Series("tide_task_runs_total", {**o, "task": RESIZE, "state": "FAILURE"}, 9.0, True),
        Series("tide_task_failures_total", {**o, "task": RESIZE, "exception": "Key"}, 9.0, True),
        *histogram("tide_task_runtime_seconds", {**o, "task": RESIZE}, 30.0, 60.0, 9.0),
        *histogram("tide_task_wait_seconds", {**o, "task": RESIZE}, 30.0, 60.0, 9.0),
        Series("tide_jobs", {**target("tide-api", "10.1.0.2:80", "other"), "state": "queued"}, 99),
    ]  # fmt: skip
    # Flower.
    events = {**flower, "task": RESIZE, "worker": "worker@a"}
    executing = "flower_worker_number_of_currently_executing_tasks"
    s += [
        Series("flower_events_total", {**events, "type": "task-succeeded"}, 2.0, True),
        Series("flower_events_total", {**events, "type": "task-failed"}, 0.5, True),
        Series("flower_events_total", {**events, "type": "task-retried"}, 0.1, True),
        Series("flower_events_total", {**events, "type": "task-received"}, 2.6, True),
        *histogram("flower_task_runtime_seconds", events, 0.25, 0.5, 2.0),
    ]
    for worker, online, busy in [("worker@a", 1, 2), ("worker@b", 1, 1), ("worker@c", 0, 0)]:
        s.append(Series("flower_worker_online", {**flower, "worker": worker}, online))
        s.append(Series(executing, {**flower, "worker": worker}, busy))
    # Two API replicas: per-process counters add up; jobs by state is one database read
    # by each replica, the same figure twice.
    for api, (task_rate, rejected, throttled, created) in zip(
        apis, [(3.0, 0.2, 0.0, 3.0), (2.0, 0.3, 0.1, 2.0)], strict=True
    ):
        for state, count in {"queued": 12, "running": 3, "succeeded": 400}.items():
            s.append(Series("tide_jobs", {**api, "state": state}, count))
        route = {**api, "method": "POST", "route": "/api/jobs/"}
        s += [
            Series("tide_jobs_submitted_total", {**api, "kind": "task"}, task_rate, True),
            Series("tide_jobs_rejected_total", {**api, "reason": "invalid"}, rejected, True),
            Series("tide_http_requests_total", {**route, "status": "201"}, created, True),
            Series("tide_http_requests_total", {**route, "status": "400"}, 0.25, True),
            *histogram("tide_http_request_duration_seconds", route, 0.01, 0.025, created + 0.25),
        ]  # fmt: skip
        if throttled:
            s.append(
                Series("tide_jobs_rejected_total", {**api, "reason": "throttled"}, throttled, True)
            )
    s.append(Series("tide_jobs_submitted_total", {**apis[0], "kind": "workflow"}, 0.5, True))
    # The operator: its pools' own namespaces (honorLabels); its own series get the
    # target's namespace. team-a has a pool of the same name as one in tide.
    for namespace, pool, figures in [
        ("tide", "tide-default", (6, 5, 4, 100, 8, 42, 0, 0)),
        ("tide", "tide-reports", (1, 1, 1, 0, 0, 0, 0, 1)),
        ("team-a", "tide-default", (9, 9, 9, 500, 50, 600, 1, 0)),
    ]:
        p = {**operator, "namespace": namespace, "workerpool": pool}
        desired, current, ready, waiting, inflight, age, fallback, paused = figures
        s += [
            Series("tide_workerpool_desired_replicas", p, desired),
            Series("tide_workerpool_current_replicas", p, current),
            Series("tide_workerpool_ready_replicas", p, ready),
            Series("tide_workerpool_observed_waiting", p, waiting),
            Series("tide_workerpool_observed_inflight", p, inflight),
            Series("tide_workerpool_observed_oldest_age_seconds", p, age),
            Series("tide_workerpool_fallback_active", p, fallback),
            Series("tide_workerpool_paused", p, paused),
        ]
    tide_default = {**operator, "namespace": "tide", "workerpool": "tide-default"}
    tide_reports = {**operator, "namespace": "tide", "workerpool": "tide-reports"}
    team_a = {**operator, "namespace": "team-a", "workerpool": "tide-default"}
    events_name = "tide_workerpool_scale_events_total"
    errors_name = "tide_workerpool_metric_errors_total"
    s += [
        Series(events_name, {**tide_default, "direction": "up"}, 0.01, True),
        Series(events_name, {**tide_reports, "direction": "down"}, 0.005, True),
        Series(events_name, {**team_a, "direction": "up"}, 1.0, True),
        Series(errors_name, tide_default, 0.05, True),
        Series(errors_name, tide_reports, 0.0, True),
        Series(errors_name, team_a, 3.0, True),
        *histogram(
            "tide_operator_reconcile_duration_seconds",
            {**operator, "namespace": "tide"},
            0.005, 0.01, 0.2,
        ),
    ]  # fmt: skip
    return s


# (dashboard, panel title, legend format) -> {legend as rendered: the true figure}.
EXPECTED: dict[tuple[str, str, str], dict[str, float]] = {
    # --- overview: queues (celery-exporter's equal figures and its "legacy" queue left out)
    ("tide-overview", "Waiting tasks", "{{queue_name}}"): {"default": 100, "io": 5},
    ("tide-overview", "Oldest waiting task", "{{queue_name}}"): {"default": 42, "io": 3},
    ("tide-overview", "In flight", "{{queue_name}}"): {"default": 8, "io": 1},
    ("tide-overview", "Scheduled (ETA/countdown)", "{{queue_name}}"): {"default": 3, "io": 0},
    ("tide-overview", "Tasks completed per second", "{{queue_name}}"): {"default": 2.5, "io": 0.5},
    # Quantiles interpolate inside the one bucket every observation fell in.
    ("tide-overview", "Wait before start p50 and p99", "p50 {{queue_name}}"): {
        "p50 default": 1.75,
        "p50 io": 0.0025,
    },
    ("tide-overview", "Wait before start p50 and p99", "p99 {{queue_name}}"): {
        "p99 default": 1 + 1.5 * 0.99,
        "p99 io": 0.005 * 0.99,
    },
    # --- overview: tasks
    ("tide-overview", "Task runs finished per second", "{{state}}"): {
        "SUCCESS": 2.5,
        "FAILURE": 0.5,
        "RETRY": 0.1,
    },
    # Failures over successes and failures: retries are neither.
    ("tide-overview", "Failure ratio by task", "{{task}}"): {RESIZE: 0.2, SLEEP: 0.0},
    ("tide-overview", "Task runtime p50 and p99", "p50 {{task}}"): {
        f"p50 {RESIZE}": 0.375,
        f"p50 {SLEEP}": 7.5,
    },
    ("tide-overview", "Task runtime p50 and p99", "p99 {{task}}"): {
        f"p99 {RESIZE}": 0.25 + 0.25 * 0.99,
        f"p99 {SLEEP}": 5 + 5 * 0.99,
    },
    ("tide-overview", "Failures by exception", "{{task}}: {{exception}}"): {
        f"{RESIZE}: ValueError": 0.3,
        f"{RESIZE}: TimeoutError": 0.2,
    },
    ("tide-overview", "Task events per second (Flower)", "{{type}}"): {
        "task-succeeded": 2.0,
        "task-failed": 0.5,
        "task-retried": 0.1,
    },
    ("tide-overview", "Task runtime p95 (Flower)", "{{task}}"): {RESIZE: 0.25 + 0.25 * 0.95},
    # --- overview: the API (two replicas)
    # One database read by each replica: 12 queued, not 24.
    ("tide-overview", "Jobs by state", "{{state}}"): {"queued": 12, "running": 3, "succeeded": 400},
    ("tide-overview", "Jobs submitted per second", "{{kind}}"): {"task": 5.0, "workflow": 0.5},
    ("tide-overview", "Submissions rejected per second", "{{reason}}"): {
        "invalid": 0.5,
        "throttled": 0.1,
    },
    ("tide-overview", "API requests per second", "{{status}}"): {"201": 5.0, "400": 0.5},
    ("tide-overview", "API latency p95 by route", "{{route}}"): {"/api/jobs/": 0.01 + 0.015 * 0.95},
    # --- overview: workers and the exporter
    ("tide-overview", "Workers online", "workers"): {"workers": 2},
    ("tide-overview", "Workers online", "pool replicas"): {"pool replicas": 6},
    ("tide-overview", "Tasks executing per worker", "{{worker}}"): {
        "worker@a": 2,
        "worker@b": 1,
        "worker@c": 0,
    },
    ("tide-overview", "Exporter health", "broker readable"): {"broker readable": 1},
    ("tide-overview", "Exporter health", "stale figures"): {"stale figures": 0},
    ("tide-overview", "Exporter read time", "read"): {"read": 0.004},
    ("tide-overview", "Exporter read time", "errors/s {{error}}"): {"errors/s Refused": 0.1},
    # --- autoscaler (namespace tide: team-a's tide-default stays out)
    ("tide-autoscaler", "Desired, current and ready replicas", "desired {{workerpool}}"): {
        "desired tide-default": 6,
        "desired tide-reports": 1,
    },
    ("tide-autoscaler", "Desired, current and ready replicas", "current {{workerpool}}"): {
        "current tide-default": 5,
        "current tide-reports": 1,
    },
    ("tide-autoscaler", "Desired, current and ready replicas", "ready {{workerpool}}"): {
        "ready tide-default": 4,
        "ready tide-reports": 1,
    },
    ("tide-autoscaler", "Waiting and in flight", "waiting {{workerpool}}"): {
        "waiting tide-default": 100,
        "waiting tide-reports": 0,
    },
    ("tide-autoscaler", "Waiting and in flight", "in flight {{workerpool}}"): {
        "in flight tide-default": 8,
        "in flight tide-reports": 0,
    },
    ("tide-autoscaler", "Oldest waiting task", "{{workerpool}}"): {
        "tide-default": 42,
        "tide-reports": 0,
    },
    # increase over the 2 m window: 0.01/s and 0.005/s.
    ("tide-autoscaler", "Scale events", "{{workerpool}} {{direction}}"): {
        "tide-default up": 1.2,
        "tide-reports down": 0.6,
    },
    ("tide-autoscaler", "Fallback and paused", "fallback {{workerpool}}"): {
        "fallback tide-default": 0,
        "fallback tide-reports": 0,
    },
    ("tide-autoscaler", "Fallback and paused", "paused {{workerpool}}"): {
        "paused tide-default": 0,
        "paused tide-reports": 1,
    },
    ("tide-autoscaler", "Metric read errors per second", "{{workerpool}}"): {
        "tide-default": 0.05,
        "tide-reports": 0.0,
    },
    ("tide-autoscaler", "Reconcile duration p95", "p95"): {"p95": 0.005 + 0.005 * 0.95},
}

# Variable -> the values its query must offer with namespace tide picked.
EXPECTED_VARIABLES = {
    ("tide-overview", "namespace"): {"tide", "other"},
    # Only Tide's queues: celery-exporter's "legacy" is not offered.
    ("tide-overview", "queue"): {"default", "io"},
    ("tide-overview", "task"): {RESIZE, SLEEP},
    ("tide-autoscaler", "namespace"): {"tide", "team-a"},
    ("tide-autoscaler", "workerpool"): {"tide-default", "tide-reports"},
}


def openmetrics(series: list[Series], start: int) -> str:
    lines = []
    # OpenMetrics wants each metric's samples together; no TYPE lines, so every name is
    # its own family (PromQL does not read types).
    for item in sorted(series, key=lambda x: x.name):
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(item.labels.items()))
        for t in range(start, start + SPAN + 1, STEP):
            value = item.value * (t - start) if item.counter else item.value
            lines.append(f"{item.name}{{{labels}}} {value!r} {t}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def substitute(expr: str) -> str:
    # Longest names first: $__rate_interval before anything shorter.
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def render(legend: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend)


@dataclass
class Prometheus:
    url: str
    at: float

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr, "time": self.at}, timeout=10
        )
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return list(body["data"]["result"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    promtool, binary = shutil.which("promtool"), shutil.which("prometheus")
    if not promtool or not binary:
        pytest.fail("promtool and prometheus are missing: apt-get install prometheus")
    work = tmp_path_factory.mktemp("dashboards-prometheus")
    # Three hours ago: inside the default retention, clear of the head block's range.
    start = (int(time.time()) - 3 * 3600) // STEP * STEP
    (work / "world.om").write_text(openmetrics(world(), start))
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "world.om", "data"],
        cwd=work,
        check=True,
        capture_output=True,
    )
    (work / "prometheus.yml").write_text("global: {}\n")
    port = _free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log_text = (work / "prometheus.log").read_text()[-2000:]
            pytest.fail(f"prometheus did not start: {log_text}")
        time.sleep(0.1)
    yield Prometheus(url=url, at=start + SPAN)
    process.terminate()
    process.wait(timeout=15)


def panel_targets() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, legend format, expression) of every panel's every query."""
    found = []
    for uid, dashboard in sorted(DASHBOARDS.items()):
        for panel in dashboard["panels"]:
            for inner in [panel, *panel.get("panels", [])]:
                for query in inner.get("targets", []):
                    found.append((uid, inner["title"], query["legendFormat"], query["expr"]))
    return found


TARGETS = panel_targets()


def test_every_panel_query_has_its_true_figure() -> None:
    assert sorted((u, t, legend) for u, t, legend, _ in TARGETS) == sorted(EXPECTED)


@pytest.mark.parametrize(
    ("uid", "title", "legend", "expr"),
    TARGETS,
    ids=[f"{u}:{t}:{legend}" for u, t, legend, _ in TARGETS],
)
def test_panel_shows_the_true_figure(
    prometheus: Prometheus, uid: str, title: str, legend: str, expr: str
) -> None:
    result = prometheus.query(substitute(expr))
    shown = {render(legend, r["metric"]): float(r["value"][1]) for r in result}
    expected = EXPECTED[(uid, title, legend)]
    assert shown.keys() == expected.keys(), f"{title}: {shown}"
    for key, value in expected.items():
        close = math.isclose(shown[key], value, rel_tol=1e-6, abs_tol=1e-9)
        assert close, f"{title} {key}: {shown}"


@pytest.mark.parametrize(("uid", "name"), sorted(EXPECTED_VARIABLES))
def test_variable_offers_tides_values(prometheus: Prometheus, uid: str, name: str) -> None:
    (variable,) = [v for v in DASHBOARDS[uid]["templating"]["list"] if v["name"] == name]
    found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
    assert found, variable["query"]
    selector, label = substitute(found.group(1)), found.group(2)
    values = {r["metric"].get(label) for r in prometheus.query(selector)}
    assert values == EXPECTED_VARIABLES[(uid, name)]
