"""``tide recommend``: from a recorded history to a WorkerPool whose replay meets the p95."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tide_operator.resources.spec import WorkerPoolSpec
from tide_operator.simulation.cli import recommend_command
from tide_operator.simulation.history import load_figures, trace_from_history
from tide_operator.simulation.recommend import evaluate
from tide_operator.simulation.simulator import SimSettings
from tide_operator.simulation.traces import TraceFormatError, seeded_rng


def burst_csv(path: Path) -> Path:
    """Twenty minutes: two bursts of 2 s tasks over a trickle, as a per-task export."""
    rng = seeded_rng(7, "recommend")
    rate = np.where((np.arange(1200) % 600) < 120, 6.0, 0.3)
    counts = rng.poisson(rate)
    arrivals = np.repeat(np.arange(1200.0), counts) + rng.random(int(counts.sum()))
    durations = rng.lognormal(np.log(2.0) - 0.125, 0.5, len(arrivals))
    lines = ["timestamp,runtime,queue"]
    lines += [f"{a:.3f},{d:.3f},default" for a, d in zip(np.sort(arrivals), durations, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_recommend_from_a_csv_meets_the_target(tmp_path: Path) -> None:
    trace_file = burst_csv(tmp_path / "history.csv")
    result = CliRunner().invoke(
        recommend_command,
        ["--trace", str(trace_file), "--p95", "15", "--queue", "default", "--concurrency", "4"],
    )
    assert result.exit_code == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    assert manifest["kind"] == "WorkerPool"
    spec = WorkerPoolSpec.model_validate(manifest["spec"])
    assert spec.queues == ("default",)
    # The comments carry the three predictions.
    assert "#   recommended" in result.stdout
    assert "#   current settings" in result.stdout
    assert "#   KEDA defaults" in result.stdout
    assert "meets the p95 wait target of 15s" in result.stdout
    # Replayed again from the printed YAML, the p95 meets what was asked.
    from tide_operator.simulation.traces import load_trace

    replay = evaluate(load_trace(trace_file), manifest["spec"], settings=SimSettings(max_wait=15))
    assert replay.p95_wait <= 15.0
    assert replay.interrupted == 0


def test_recommend_keeps_the_pools_own_fields(tmp_path: Path) -> None:
    """With --pool, the queues, target and metrics of the user's WorkerPool are kept."""
    trace_file = burst_csv(tmp_path / "history.csv")
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "tide.dev/v1alpha1",
                "kind": "WorkerPool",
                "metadata": {"name": "reports", "namespace": "tide"},
                "spec": {
                    "queues": ["default"],
                    "concurrency": 4,
                    "scaleTargetRef": {"name": "reports-worker"},
                    "maxReplicas": 3,
                    "metrics": {"exporter": {"url": "http://tide-exporter.tide.svc:9808/metrics"}},
                },
            }
        )
    )
    result = CliRunner().invoke(
        recommend_command, ["--trace", str(trace_file), "--p95", "20", "--pool", str(pool)]
    )
    assert result.exit_code == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    assert manifest["metadata"] == {"name": "reports", "namespace": "tide"}
    assert manifest["spec"]["scaleTargetRef"]["name"] == "reports-worker"
    assert manifest["spec"]["metrics"]["exporter"]["url"].startswith("http://tide-exporter")


def test_recommend_from_recorded_figures(tmp_path: Path) -> None:
    """The exporter's figures, one row per scrape and queue, rebuild a trace of the tasks."""
    rows = ["at,queue_name,celery_queue_length,celery_queue_inflight,celery_queue_completed_total"]
    completed = 0
    for step in range(120):
        completed += 5
        rows.append(f"{step * 5},default,{(step % 4) * 3},4,{completed}")
        rows.append(f"{step * 5},other,100,100,{completed * 9}")  # another pool's queue
    figures = tmp_path / "figures.csv"
    figures.write_text("\n".join(rows) + "\n")
    history = load_figures(figures, queues=["default"])
    assert history.completed[-1] == completed
    trace = trace_from_history(history)
    # 5 completions per 5 s with 4 in flight: Little's law says 4 s tasks.
    assert float(np.mean(trace.durations)) == pytest.approx(4.0, rel=0.2)
    result = CliRunner().invoke(
        recommend_command,
        ["--figures", str(figures), "--p95", "30", "--queue", "default", "--concurrency", "2"],
    )
    assert result.exit_code == 0, result.stderr
    WorkerPoolSpec.model_validate(yaml.safe_load(result.stdout)["spec"])


BAD_INPUTS = [
    # No history at all.
    (["--p95", "10", "--queue", "q"], "give exactly one history"),
    # Two histories.
    (["--p95", "10", "--queue", "q", "--trace", "a.csv", "--figures", "b.csv"], "exactly one"),
    # No pool and no queue.
    (["--p95", "10", "--trace", "{csv}"], "give the pool as --pool FILE"),
    # A file in neither trace form.
    (["--p95", "10", "--queue", "q", "--trace", "{bad}"], "found columns [when, how_long]"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    csv_file = burst_csv(tmp_path / "ok.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("when,how_long\n1,2\n")
    argv = [a.format(csv=csv_file, bad=bad) for a in args]
    result = CliRunner().invoke(recommend_command, argv)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_figures_header_error() -> None:
    with pytest.raises(TraceFormatError, match="expected at, celery_queue_length"):
        load_figures(Path(__file__))
