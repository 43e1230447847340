"""The poller: reads the broker every ``interval`` seconds on its own thread.

Reads happen on a fixed interval rather than on each ``/metrics`` request, because:

* the broker's load is set by the exporter, not by how many scrape it: Prometheus HA
  pairs, the operator scraping directly, local mode and ad-hoc ``curl`` all share one read;
* a scrape never waits on the broker: it formats the last read, so a hung broker yields a
  fast answer with ``tide_exporter_up 0`` instead of a scrape timeout that hides the
  exporter's own health series too;
* the in-flight tracker (``tide.exporter.unacked``) pays per change since its last read,
  so regular reads keep each one small.

The cost is up to ``interval`` of extra lag (default 2 s, well under the usual 15 s scrape
interval, and one read of 100 queues costs about a millisecond).

A failed read records the error, drops the connection (the next read reconnects from
scratch, so a restarted broker or a failed-over address is picked up) and keeps the last
values for the collector to mark stale. Discovery (queues found in the broker's bindings)
runs on a slower interval because it walks the keyspace; its failure keeps the queues it
found before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from tide.exporter.collector import ExporterState
from tide.exporter.readers import QueueReader, merge_names

log = logging.getLogger(__name__)


class QueuePoller:
    """Reads ``configured`` (and discovered) queues into ``state`` on a thread."""

    def __init__(
        self,
        *,
        reader: QueueReader,
        state: ExporterState,
        configured: Sequence[str],
        interval: float = 2.0,
        discovery_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.state = state
        self.configured = list(configured)
        self.interval = interval
        self.discovery_interval = discovery_interval
        self._clock = clock
        self._discovered: set[str] = set()
        self._next_discovery = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the first read has ended (figures or an error): the server waits on it
        #: briefly so a healthy broker's figures are on the first scrape.
        self.first_read = threading.Event()

    def names(self) -> list[str]:
        """Configured queues first, then those found in the broker, then any with unacked work."""
        unacked = getattr(self.reader, "unacked_queues", None)
        extra = sorted(unacked()) if callable(unacked) else []
        return merge_names(self.configured, sorted(self._discovered), extra)

    def poll_once(self) -> None:
        """One read (with discovery when due); failures are recorded, never raised."""
        started = time.perf_counter()
        monotonic = time.monotonic()
        if monotonic >= self._next_discovery:
            self._next_discovery = monotonic + self.discovery_interval
            try:
                self._discovered = self.reader.discover()
            except Exception as error:
                log.warning("queue discovery failed: %s", error)
                # Retry discovery with the next read, not a whole discovery interval later.
                self._next_discovery = monotonic
        try:
            stats = self.reader.read(self.names(), now=self._clock())
        except Exception as error:
            duration = time.perf_counter() - started
            log.warning("reading the broker failed (%s): %s", type(error).__name__, error)
            self.state.record_failure(error, duration=duration)
            self.reader.close()
            return
        self.state.record_success(
            stats,
            duration=time.perf_counter() - started,
            now=self._clock(),
            # Per-task counters: only readers of a broker the integration writes to have them.
            tasks=getattr(self.reader, "last_tasks", None),
        )

    def run(self) -> None:
        """Read at once, then every ``interval`` until stopped.

        Reads start on a fixed schedule (``interval`` apart, start to start), so a read
        that fails after a connect timeout does not stretch the period by its own length;
        a read longer than the interval is followed by the next at once, never by a burst.
        """
        next_at = time.monotonic()
        while True:
            self.poll_once()
            self.first_read.set()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="tide-exporter-poller", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.reader.close()
