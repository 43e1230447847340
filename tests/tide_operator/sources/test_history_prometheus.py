"""``tide recommend`` reading a pool's history from a real Prometheus (range queries)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import yaml
from prometheus_harness import Exposition

from tide_operator.resources.spec import WorkerPoolSpec
from tide_operator.simulation.history import history_from_prometheus, trace_from_history
from tide_operator.simulation.recommend import evaluate, recommend, render_workerpool
from tide_operator.simulation.simulator import SimSettings
from tide_operator.simulation.traces import TraceFormatError

pytestmark = pytest.mark.timeout(180)


def exposition_text(*, waiting: int, inflight: int, completed: int, queue: str = "hist") -> str:
    return "\n".join(
        [
            "# TYPE celery_queue_length gauge",
            f'celery_queue_length{{queue_name="{queue}"}} {waiting}',
            "# TYPE celery_queue_inflight gauge",
            f'celery_queue_inflight{{queue_name="{queue}"}} {inflight}',
            "# TYPE celery_queue_completed_total counter",
            f'celery_queue_completed_total{{queue_name="{queue}"}} {completed}',
            "",
        ]
    )


def ingested(prometheus: str, completed: int) -> bool:
    answer = httpx.get(
        f"{prometheus}/api/v1/query",
        params={"query": 'sum(celery_queue_completed_total{queue_name="hist"})'},
        timeout=5,
    ).json()
    result = answer["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == completed


def test_recommend_from_a_prometheus_history(
    prometheus: str, exposition: Exposition, wait: Callable[..., object]
) -> None:
    """A queue's figures go through a real Prometheus; the range query rebuilds the tasks,
    and the recommended WorkerPool's replay meets the p95 asked for."""
    start = time.time()
    completed = 0
    # Twelve scrapes' worth of a busy queue: 4 running, a backlog that comes and goes, and
    # the counter rising by 8 each step. Each step waits until Prometheus holds it.
    for step in range(12):
        completed += 8
        exposition.text = exposition_text(waiting=(step % 3) * 5, inflight=4, completed=completed)
        wait(lambda c=completed: ingested(prometheus, c), what=f"step {step} ingested")
    end = time.time()
    history = history_from_prometheus(
        prometheus, queues=["hist"], start=start - 2, end=end + 1, step=1.0
    )
    assert history.completed[-1] == completed
    assert history.inflight.max() == 4
    trace = trace_from_history(history, seed=3)
    # Conservation: what the counter says finished (plus the last backlog) arrived.
    assert trace.tasks >= completed - history.completed[0]
    current = {
        "queues": ["hist"],
        "concurrency": 2,
        "scaleTargetRef": {"name": "hist-worker"},
        "metrics": {"prometheus": {"url": prometheus}},
    }
    settings = SimSettings(startup_delay=5.0, max_wait=10.0)
    result = recommend(trace, current, target_p95=10.0, settings=settings, passes=1)
    assert result.met, result.best.summary
    text = render_workerpool(result, name="hist", namespace="default", trace=trace)
    manifest = yaml.safe_load(text)
    spec = WorkerPoolSpec.model_validate(manifest["spec"])
    assert spec.queues == ("hist",)
    # The printed settings, replayed again, meet the target: the YAML says what was tested.
    replayed = evaluate(trace, manifest["spec"], settings=settings)
    assert replayed.p95_wait <= 10.0
    assert replayed.interrupted == 0


def test_prometheus_without_the_series_is_one_line(prometheus: str) -> None:
    with pytest.raises(TraceFormatError) as raised:
        history_from_prometheus(
            prometheus, queues=["never-seen"], start=time.time() - 60, end=time.time(), step=5
        )
    assert "no samples of celery_queue_length for queues never-seen" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_unreachable_prometheus_is_one_line(silent_server: str) -> None:
    with pytest.raises(TraceFormatError) as raised:
        history_from_prometheus(silent_server, queues=["q"], start=0, end=60, step=5, timeout=0.5)
    assert "range query" in str(raised.value)
