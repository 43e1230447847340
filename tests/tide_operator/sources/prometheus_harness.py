"""A real Prometheus scraping a tiny exposition served on loopback, for the metric sources.

``exposition`` serves whatever text the test sets (a thread-based HTTP server); the
session's ``prometheus`` is the Debian binary with a one-second scrape interval, started on
a free port with a temporary TSDB and stopped at the end. Tests wait for Prometheus to have
ingested a value (a query with a deadline), never for a fixed time.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest


class Exposition:
    def __init__(self) -> None:
        self.text = ""
        self.url = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(state: Exposition) -> Iterator[Exposition]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = state.text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    yield state
    server.shutdown()


@pytest.fixture(scope="session")
def exposition() -> Iterator[Exposition]:
    """Tide's exporter, as Prometheus scrapes it (job ``exporter``)."""
    yield from _serve(Exposition())


@pytest.fixture(scope="session")
def other_exporter() -> Iterator[Exposition]:
    """A second exporter scraped by the same Prometheus (job ``celery-exporter``), empty
    unless a test gives it text: celery-exporter publishes the same series names."""
    yield from _serve(Exposition())


def start_prometheus(config: Path, data: Path, port: int, *flags: str) -> subprocess.Popen[bytes]:
    """Debian's Prometheus on ``config`` and the storage ``data``, on loopback ``port``,
    returned once it answers ``/-/ready`` (the test fails if it does not within 30 s)."""
    binary = shutil.which("prometheus")
    if binary is None:
        # A missing install, not a reason to pass quietly: make install-dev puts it there.
        pytest.fail("prometheus is not installed: run make install-dev (Debian's prometheus)")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("prometheus did not become ready")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def prometheus(exposition: Exposition, other_exporter: Exposition) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="tide-prom-"))
    target = exposition.url.removeprefix("http://").removesuffix("/metrics")
    other = other_exporter.url.removeprefix("http://").removesuffix("/metrics")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: exporter\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
        "  - job_name: celery-exporter\n"
        f"    static_configs: [{{targets: ['{other}']}}]\n"
    )
    port = _free_port()
    process = start_prometheus(config, workdir / "data", port, "--query.lookback-delta=5s")
    url = f"http://127.0.0.1:{port}"
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (for timeouts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
