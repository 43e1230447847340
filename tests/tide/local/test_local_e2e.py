"""End to end, every part real but the cluster: ``tide up`` with one pool (min 0, max 4)
on the real PostgreSQL and Redis; a burst of jobs through its API; worker processes that
appear from zero, drain the queue and go away again; a worker killed mid-burst whose task
is redelivered; and a Ctrl-C that stops everything cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from typing import Any

import httpx
import pytest

from tide.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 240


def test_burst_scales_up_from_zero_drains_and_scales_back(platform: Any, wait: Any) -> None:
    assert platform.processes() == []

    # A job long enough to be killed mid-task, submitted ahead of the burst.
    response = platform.api.post(
        "/api/jobs/", json={"task": "tide.samples.io_bound", "args": [8.0]}
    )
    assert response.status_code == 201, response.text
    victim_id = response.json()["id"]

    rng = random.Random(7)
    ids = [victim_id]
    for _ in range(BURST):
        seconds = rng.choice([0.05, 0.2, 0.5, 1.0])
        response = platform.api.post(
            "/api/jobs/", json={"task": "tide.samples.io_bound", "args": [seconds]}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    # Kill the pool process running the long job, as the OOM killer would.
    def victim_started() -> Job | None:
        return Job.objects.filter(id=victim_id, state=JobState.STARTED).exclude(worker="").first()

    victim = wait(victim_started, what="the long job to start")
    pid = wait(lambda: platform.pid_running(victim.worker, victim_id), what="its process")
    os.kill(pid, signal.SIGKILL)

    # Scale-up from zero: more than one worker answers while the backlog is there.
    seen = wait(
        lambda: len(platform.workers()) >= 2 and platform.workers(),
        timeout=60,
        what="workers to scale up from zero",
    )
    assert all(h.startswith(f"{platform.pool}-") for h in seen)

    # Every job succeeds exactly once (redelivered jobs of the killed process run twice).
    def all_succeeded() -> bool:
        return Job.objects.filter(id__in=ids, state=JobState.SUCCEEDED).count() == BURST + 1

    wait(all_succeeded, timeout=180, what="every job to succeed")
    assert Job.objects.filter(id__in=ids).count() == BURST + 1
    assert not Job.objects.filter(id__in=ids).exclude(state=JobState.SUCCEEDED).exists()
    victim.refresh_from_db()
    assert victim.attempts == 2
    # Workers removed by scale-down were never cut short: nothing else ran twice.
    assert list(Job.objects.filter(id__in=ids, attempts__gt=1).values_list("id", flat=True)) == [
        victim.id
    ]

    # Back to zero after the cooldown, and the processes are gone, not just quiet.
    wait(
        lambda: platform.processes() == [],
        timeout=90,
        what="workers to scale back to zero",
        explain=platform.decisions,
    )

    # Ctrl-C: a clean, prompt exit.
    platform.process.send_signal(signal.SIGINT)
    assert platform.process.wait(timeout=60) == 0


def test_the_view_logs_each_decision_to_var(platform: Any, wait: Any) -> None:
    # With the live view on, every decision still lands in var/tide-up.log as a JSON line
    # (reason, figures, events), so what the view showed can be read afterwards.
    def logged() -> list[dict[str, Any]]:
        lines = platform.decisions(last=5).splitlines()
        # "<time> INFO <json>": the record is the JSON after the log prefix.
        return [json.loads(line[line.index("{") :]) for line in lines]

    decisions = wait(logged, timeout=60, what="a decision in var/tide-up.log")
    assert decisions[-1]["pool"] == platform.pool
    assert decisions[-1]["reason_code"]
    assert "waiting" in decisions[-1]


def test_a_killed_exporter_is_restarted_and_the_platform_goes_on(platform: Any, wait: Any) -> None:
    # Kill the exporter as the OOM killer would: `tide up` restarts it (after a back-off)
    # instead of stopping everything, and the metrics answer again from a new process.
    url = f"http://127.0.0.1:{platform.exporter_port}/metrics"

    def exporter_pid() -> int | None:
        out = subprocess.run(
            ["pgrep", "-f", f"exporter .*--port {platform.exporter_port}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        pids = [int(p) for p in out.stdout.split()]
        return pids[0] if len(pids) == 1 else None

    def metrics_answer() -> bool:
        try:
            return httpx.get(url, timeout=2).is_success
        except httpx.HTTPError:
            return False

    wait(metrics_answer, timeout=60, what="the exporter's metrics")
    first = wait(exporter_pid, timeout=30, what="the exporter's process")
    os.kill(first, signal.SIGKILL)
    wait(
        lambda: (pid := exporter_pid()) is not None and pid != first and metrics_answer(),
        timeout=60,
        what="a new exporter answering",
    )
    assert platform.process.poll() is None
