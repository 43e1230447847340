"""gunicorn settings for ``tide api``; every value can be overridden from the environment.

One process per core (``WEB_CONCURRENCY``), each with a few threads: a request is a few
milliseconds of CPU and as much again of waiting on the database and the broker.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

bind = os.environ.get("TIDE_API_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# A submission spends about as long waiting on PostgreSQL and the broker as it computes;
# a few threads per process overlap those waits (the GIL is released during them).
threads = int(os.environ.get("GUNICORN_THREADS", 4))
worker_class = "gthread" if threads > 1 else "sync"
# Recycle workers slowly to bound memory growth from long-lived processes.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 10000))
max_requests_jitter = max_requests // 10
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
# Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds: finish in-flight
# requests within that.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 20))
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
# Behind an ingress, trust its X-Forwarded-* headers.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")


def child_exit(server: Any, worker: Any) -> None:
    # Drop the dead worker's live gauges from the multiprocess metrics directory.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
