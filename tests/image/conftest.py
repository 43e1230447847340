"""Fixtures for the image's tests: Tide's image built with podman, the chart rendered for
this machine's services, a database of its own, and the chart's pods run from the image.

The image is built once per session by ``scripts/image-build.sh`` (which installs podman,
runc and debootstrap from Debian when they are missing, and makes the base image once per
machine); a build that cannot happen fails the tests with the script's own message, never
skips them. The chart is rendered with its default values except for what points it at
this machine: an external database (the host's PostgreSQL, a database made for this run)
and an external Redis (the host's, under a key prefix of this run), as a user with managed
services installs it. Pods are started from the rendered objects by ``chart_pods``;
teardown removes the containers, the database and the run's Redis keys.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "charts"))

from chart_pods import HOST_LOOPBACK, RUN, Built, Namespace, Pods, SilentApiServer  # noqa: E402
from chart_render import NAMESPACE, Render, template  # noqa: E402

DATABASE = f"tide_image_{RUN}"
REDIS_DB = 0
KEY_PREFIX = f"tide-image-{RUN}:"


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    tag = f"localhost/tide:smoke-{RUN}"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "image-build.sh"), tag],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/image-build.sh failed (exit {result.returncode}):\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    figures = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    podman = ["env", f"CONTAINERS_CONF={figures['containers_conf']}", "podman"]
    yield Built(image=tag, podman=podman, figures=figures)
    # The tag goes; the layers stay for the next build's cache.
    subprocess.run([*podman, "untag", tag, tag], capture_output=True, check=False)


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    def admin(sql: str) -> None:
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()

    admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{DATABASE}"')
    yield DATABASE
    admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


@pytest.fixture(scope="session")
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    yield client
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture(scope="session")
def chart(database: str) -> Render:
    """The chart as a user with an external database and Redis renders it."""
    values = ",".join(
        [
            "postgresql.enabled=false",
            f"database.url=postgres://postgres@{HOST_LOOPBACK}:5432/{database}",
            "redis.enabled=false",
            f"broker.url=redis://{HOST_LOOPBACK}:6379/{REDIS_DB}",
            f"config.brokerKeyPrefix={KEY_PREFIX}",
            # The smoke test submits a sample task: opt in, as the chart asks.
            "config.sampleTasks=true",
        ]
    )
    return Render("image-smoke", template("--set", values), 0.0)


@pytest.fixture(scope="session")
def api_server() -> Iterator[SilentApiServer]:
    server = SilentApiServer()
    yield server
    server.sock.close()


@pytest.fixture(scope="session")
def pods(
    built: Built,
    chart: Render,
    broker: redis.Redis,
    api_server: SilentApiServer,
    wait: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pods]:
    root = tmp_path_factory.mktemp("pods")
    # A service-account token as the kubelet mounts it; any CA bundle serves as ca.crt.
    account = root / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(f"smoke-token-{RUN}")
    (account / "namespace").write_text(NAMESPACE)
    shutil.copy(
        ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt",
        account / "ca.crt",
    )
    for path in (account, *account.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    pods = Pods(
        built=built,
        chart=chart,
        namespace=Namespace.from_objects(
            NAMESPACE,
            chart.objects,
            service_account=account,
            api_server=(HOST_LOOPBACK, api_server.port),
        ),
        root=root,
        wait=wait,
    )
    yield pods
    for pod in pods.all():
        pod.remove()
    # This run's figures, for bench/bench_image.py and the docs.
    (built.state / "smoke.json").write_text(
        json.dumps({"start_seconds": pods.start_seconds}, indent=2) + "\n"
    )
    shutil.rmtree(root, ignore_errors=True)
