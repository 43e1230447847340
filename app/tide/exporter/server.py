"""HTTP serving of ``/metrics`` and ``/healthz``, and the running exporter as one object.

A threaded ``http.server``: each scrape gets a thread and only formats the last read
(see ``tide.exporter.poller``), so a scrape costs microseconds and never touches the
broker. ``/healthz`` is liveness only: it fails when the poller thread has died, not when
the broker is down, because restarting the exporter cannot fix a broker and would only
lose the stale values and error counters that say what is wrong.

``start_exporter`` builds the reader, state, poller, collector and server from an
``ExporterConfig`` and returns a ``RunningExporter`` with ``stop()``; the CLI and local
mode both use it. The registry is private (not prometheus-client's global one) so two
exporters in one process, as in tests and local mode, do not collide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tide.exporter.collector import ExporterState, QueueCollector
from tide.exporter.config import ExporterConfig
from tide.exporter.poller import QueuePoller
from tide.exporter.readers import QueueReader, reader_for

log = logging.getLogger(__name__)

#: Longest wait for the first read before the port answers anyway (seconds).
FIRST_READ_WAIT = 1.0


def _handler(registry: CollectorRegistry, healthy: Callable[[], bool]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, encoder(registry), content_type)
            elif path == "/healthz":
                ok = healthy()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"poller stopped\n")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Prometheus scrapes every few seconds; one log line per scrape is noise.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True


@dataclass
class RunningExporter:
    """A started exporter: its bound address, its parts, and how to stop it."""

    server: MetricsServer
    poller: QueuePoller
    state: ExporterState
    registry: CollectorRegistry
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        address = self.server.server_address[0]
        host = address.decode() if isinstance(address, bytes) else str(address)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, then stop the poller and close the broker connection."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.poller.stop()


def start_exporter(config: ExporterConfig, *, reader: QueueReader | None = None) -> RunningExporter:
    """Start polling and serving (port 0 picks a free port; see ``RunningExporter.port``)."""
    reader = reader or reader_for(
        config.broker_url,
        transport_options=config.transport_options,
        management_url=config.management_url,
    )
    state = ExporterState()
    poller = QueuePoller(
        reader=reader,
        state=state,
        configured=config.queues,
        interval=config.interval,
        discovery_interval=config.discovery_interval,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(state))
    server = MetricsServer((config.host, config.port), _handler(registry, poller.alive))
    # The poller reads at once on its thread. The port answers after that first read, so
    # the first scrape has figures, or after FIRST_READ_WAIT at the latest: a broker that
    # hangs must not keep the exporter silent, since ``tide_exporter_up 0`` and the error
    # counter are what tell people the broker is the problem.
    poller.start()
    poller.first_read.wait(FIRST_READ_WAIT)
    thread = threading.Thread(target=server.serve_forever, name="tide-exporter-http", daemon=True)
    thread.start()
    log.info("exporter serving on %s:%s", *server.server_address[:2])
    return RunningExporter(
        server=server, poller=poller, state=state, registry=registry, thread=thread
    )
