"""Every role of Tide's image, run as the chart runs it.

Each test starts one workload of the rendered chart from the image this session built,
with the pod's own arguments, environment, probes and security context: read-only root,
``/tmp`` the only writable path, uid 10001 without a passwd entry, every capability
dropped, no privilege escalation, the chart's resource limits. The tests run in file order,
each role beside those already up, as after ``helm install``: the migration Job, the API
(after its wait-for-migrations init container), a worker of the chart's WorkerPool, the
exporter, Flower, beat, and the operator up to its login. Every pod's ``/tmp`` holds a
``tide.py`` that would stop the role if anything imported it in place of Tide's package.
"""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import psycopg2
import pytest
from chart_pods import HOSTILE_MODULE, Built, Pods, SilentApiServer

# The first test builds the image: minutes on a fresh machine (podman from Debian, the
# base image, every dependency from the package index), seconds once cached.
pytestmark = pytest.mark.timeout(1500)

SECRET = "tide"


def test_migrate_job_applies_every_migration(pods: Pods, database: str) -> None:
    pod = pods.start("migrate")
    pods.wait(
        lambda: not pod.running(),
        timeout=120,
        interval=0.2,
        what="the migration Job to finish",
        explain=pod.logs,
    )
    assert pod.exit_code() == 0, pod.logs()
    pods.ready("migrate")
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM django_migrations WHERE app = 'jobs'")
        (applied,) = cur.fetchone()
    assert applied > 0


def test_api_passes_its_probes(pods: Pods) -> None:
    # Its init container (wait-for-migrations) runs first and finds nothing to wait for.
    pods.start("api")
    api = pods.until_probe("api", "startupProbe")
    assert api.probe("livenessProbe")
    # /readyz: the database and the broker answer from inside the pod.
    assert api.probe("readinessProbe")


def test_a_job_submitted_through_the_api_runs_on_a_worker(pods: Pods) -> None:
    api = pods.started["api"]
    # An admin's way to a token in a cluster: `kubectl exec deploy/tide-api -- tide token`.
    made = api.exec(["tide", "token", "smoke"])
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    worker = pods.start("worker")
    headers = {"Authorization": f"Token {token}", "Host": "localhost"}
    submitted = httpx.post(
        api.url("http", "/api/jobs/"),
        json={"task": "tide.samples.add", "args": [2, 3]},
        headers=headers,
        timeout=10,
    )
    assert submitted.status_code == 201, submitted.text
    job_url = api.url("http", f"/api/jobs/{submitted.json()['id']}/")

    def finished() -> dict[str, Any] | None:
        job = httpx.get(job_url, headers=headers, timeout=10).json()
        return job if worker.alive() and job["state"] in {"succeeded", "failed"} else None

    job = pods.wait(
        finished, timeout=120, interval=0.2, what="the job to finish", explain=worker.logs
    )
    pods.ready("worker")
    assert (job["state"], job["result"]) == ("succeeded", 5)


def test_worker_answers_its_liveness_probe(pods: Pods) -> None:
    # `celery inspect ping` to the worker's own node name, from inside its pod.
    worker = pods.started["worker"]
    assert worker.probe("livenessProbe"), worker.logs()


def test_exporter_serves_queue_metrics(pods: Pods) -> None:
    pods.start("exporter")
    exporter = pods.until_probe("exporter", "readinessProbe")

    def metrics() -> str | None:
        answer = httpx.get(exporter.url("metrics", "/metrics"), timeout=5)
        return answer.text if 'celery_queue_length{queue_name="default"}' in answer.text else None

    # The first broker read follows the first probe within one interval.
    text = pods.wait(
        metrics, timeout=30, what="celery_queue_length of the default queue", explain=exporter.logs
    )
    assert "tide_exporter_up 1.0" in text


def test_flower_requires_its_credentials(pods: Pods) -> None:
    pods.start("flower")
    flower = pods.until_probe("flower", "readinessProbe")
    user, password = pods.namespace.secrets[SECRET]["FLOWER_BASIC_AUTH"].split(":", 1)
    assert httpx.get(flower.url("http", "/workers"), timeout=10).status_code == 401
    answer = httpx.get(flower.url("http", "/workers"), auth=(user, password), timeout=10)
    assert answer.status_code == 200


def test_beat_starts(pods: Pods, database: str) -> None:
    beat = pods.start("beat")

    def purge_scheduled() -> bool:
        # Beat's DatabaseScheduler writes the built-in purge into its store at start.
        with (
            psycopg2.connect(host="127.0.0.1", user="postgres", dbname=database) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(
                "SELECT count(*) FROM django_celery_beat_periodictask "
                "WHERE name = 'purge-expired-jobs'"
            )
            return bool(cur.fetchone()[0])

    pods.wait(
        lambda: beat.alive() and purge_scheduled(),
        timeout=60,
        interval=0.2,
        what="beat to schedule the built-in purge in the database",
        explain=beat.logs,
    )
    pods.ready("beat")


def test_operator_logs_in_with_its_service_account(pods: Pods, api_server: SilentApiServer) -> None:
    # The chart mounts the operator's token: it logs in, kopf names it (from the pod, not
    # from a passwd entry uid 10001 does not have), and it calls the API server, which
    # here accepts and hangs up. It retries instead of exiting, one line per attempt.
    operator = pods.start("operator")
    pods.wait(
        lambda: operator.alive() and api_server.connections >= 1,
        timeout=90,
        interval=0.2,
        what="the operator to call the API server",
        explain=operator.logs,
    )
    pods.ready("operator")
    pods.wait(
        lambda: operator.alive() and api_server.connections >= 2,
        timeout=60,
        interval=0.2,
        what="the operator to call again",
        explain=operator.logs,
    )
    assert "Traceback" not in operator.logs(), operator.logs()


def test_operator_without_credentials_says_so_in_one_line(pods: Pods) -> None:
    # The same pod without a token (automountServiceAccountToken: false, or a shell
    # without a kubeconfig): one line that says what is missing, exit 1, no traceback.
    operator = pods.start("operator", name="operator-no-token", automountServiceAccountToken=False)
    pods.wait(
        lambda: not operator.running(),
        timeout=90,
        interval=0.2,
        what="the operator to give up logging in",
        explain=operator.logs,
    )
    log = operator.logs()
    assert operator.exit_code() == 1
    assert "Traceback" not in log, log
    assert "no usable Kubernetes credentials" in log, log


def test_no_role_imported_the_module_planted_in_tmp(pods: Pods) -> None:
    assert pods.started, "no pod ran"
    assert [p.name for p in pods.all() if (p.tmp_dir / "SHADOWED").exists()] == []


def test_the_planted_module_shadows_tide_from_a_tmp_working_directory(
    built: Built, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The probe above can fail: with /tmp as the working directory (the image's before),
    # `celery -A tide` imports the planted module instead of Tide.
    tmp = tmp_path_factory.mktemp("shadow")
    tmp.chmod(0o777)
    (tmp / "tide.py").write_text(HOSTILE_MODULE)
    result = subprocess.run(
        [
            *built.podman,
            "run",
            "--rm",
            "--passwd=false",
            "--read-only",
            "--read-only-tmpfs=false",
            f"--volume={tmp}:/tmp",
            "--workdir=/tmp",
            "--entrypoint=celery",
            built.image,
            "-A",
            "tide",
            "report",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (tmp / "SHADOWED").exists(), result.stdout + result.stderr


def test_beat_is_still_running(pods: Pods) -> None:
    # Up since its own test, across every role started after it.
    beat = pods.started["beat"]
    assert beat.alive()
