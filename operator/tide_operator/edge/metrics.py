"""The operator's own Prometheus metrics (Contract 1), on port 9091 ``/metrics``.

The names are a contract with the chart's dashboards and alerts; change them only together.
They live in a registry of their own (``REGISTRY``) rather than prometheus-client's global
one, so tests and the benchmark can create fresh ``OperatorMetrics`` without colliding, and
so the exposition holds exactly these series plus the process collectors.

Per-pool series carry ``namespace`` and ``workerpool`` labels and are removed when the pool
is deleted (``forget``), so a deleted pool does not keep reporting its last size forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from tide_operator.reconcile.step import StepResult

__all__ = ["OperatorMetrics", "serve"]

_POOL = ("namespace", "workerpool")


class OperatorMetrics:
    """The operator's series in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.desired = Gauge(
            "tide_workerpool_desired_replicas", "Replicas the policy asked for.", _POOL, registry=r
        )
        self.current = Gauge(
            "tide_workerpool_current_replicas",
            "Worker pods that exist (the Deployment's status.replicas), terminating ones "
            "excluded; not the spec.replicas the operator set.",
            _POOL,
            registry=r,
        )
        self.ready = Gauge(
            "tide_workerpool_ready_replicas",
            "Worker pods that are ready (the Deployment's status.readyReplicas).",
            _POOL,
            registry=r,
        )
        self.waiting = Gauge(
            "tide_workerpool_observed_waiting",
            "Waiting tasks the last decision saw.",
            _POOL,
            registry=r,
        )
        self.inflight = Gauge(
            "tide_workerpool_observed_inflight",
            "In-flight tasks the last decision saw.",
            _POOL,
            registry=r,
        )
        self.oldest_age = Gauge(
            "tide_workerpool_observed_oldest_age_seconds",
            "Age of the oldest waiting task the last decision saw.",
            _POOL,
            registry=r,
        )
        self.scale_events = Counter(
            "tide_workerpool_scale_events",
            "Replica changes made by the operator.",
            (*_POOL, "direction"),
            registry=r,
        )
        self.metric_errors = Counter(
            "tide_workerpool_metric_errors", "Failed metric reads.", _POOL, registry=r
        )
        self.fallback = Gauge(
            "tide_workerpool_fallback_active", "1 while fallback replicas run.", _POOL, registry=r
        )
        self.paused = Gauge(
            "tide_workerpool_paused", "1 while spec.paused is set.", _POOL, registry=r
        )
        self.recovered = Counter(
            "tide_workerpool_recovered_messages",
            "Messages a dead worker of the pool held unacknowledged that the operator put "
            "back in their queue (Redis; docs/recovery.md).",
            (*_POOL, "queue_name"),
            registry=r,
        )
        self.api_failures = Counter(
            "tide_operator_api_failures",
            "Pool reconciles that failed on the Kubernetes API, by cause: 'unreachable' or "
            "the HTTP status of a transient answer (401, 403, 429, 5xx).",
            ("cause",),
            registry=r,
        )
        self.acting = Gauge(
            "tide_operator_acting",
            "1 while this replica holds the operator's Lease and acts (scales, writes "
            "statuses, posts Events); 0 while it stands by.",
            ("replica",),
            registry=r,
        )
        self.lease_acquisitions = Counter(
            "tide_operator_lease_acquisitions",
            "Times this replica acquired the operator's Lease (created it, took it over, or "
            "took it back after losing it).",
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "tide_operator_reconcile_duration_seconds",
            "Duration of one pool's reconcile step.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )

    def record(self, namespace: str, pool: str, result: StepResult, *, paused: bool) -> None:
        """Update the per-pool series from one step."""
        labels = (namespace, pool)
        self.paused.labels(*labels).set(1 if paused else 0)
        if result.replicas is not None:
            # What exists: a pool whose pods cannot be created reads 0 here while desired
            # says 2, which is what TideWorkerPoolBelowDesired is for.
            self.current.labels(*labels).set(result.replicas.existing)
            self.ready.labels(*labels).set(result.replicas.ready)
        elif result.current is not None:
            self.current.labels(*labels).set(
                result.decision.replicas if result.scaled and result.decision else result.current
            )
        if result.decision is not None:
            self.desired.labels(*labels).set(result.decision.replicas)
            self.fallback.labels(*labels).set(1 if result.decision.reason_code == "Fallback" else 0)
        if result.observation is not None:
            self.waiting.labels(*labels).set(result.observation.waiting)
            self.inflight.labels(*labels).set(result.observation.inflight)
            age = result.observation.oldest_age
            self.oldest_age.labels(*labels).set(age if age is not None else 0.0)
        if result.metric_error is not None:
            self.metric_errors.labels(*labels).inc()
        direction: Literal["up", "down"] | None = result.direction
        if direction is not None:
            self.scale_events.labels(*labels, direction).inc()

    def forget(self, namespace: str, pool: str) -> None:
        """Drop a deleted pool's series."""
        for metric in (
            self.desired,
            self.current,
            self.ready,
            self.waiting,
            self.inflight,
            self.oldest_age,
            self.metric_errors,
            self.fallback,
            self.paused,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, pool)
        for direction in ("up", "down"):
            with contextlib.suppress(KeyError):
                self.scale_events.remove(namespace, pool, direction)
        queues = {
            sample.labels["queue_name"]
            for family in self.recovered.collect()
            for sample in family.samples
            if (sample.labels.get("namespace"), sample.labels.get("workerpool"))
            == (namespace, pool)
        }
        for queue in queues:
            with contextlib.suppress(KeyError):
                self.recovered.remove(namespace, pool, queue)

    def record_recovery(self, namespace: str, pool: str, restored: Mapping[str, int]) -> None:
        """Count the messages a dead worker of the pool held that went back, per queue."""
        for queue, count in restored.items():
            self.recovered.labels(namespace, pool, queue).inc(count)


def serve(metrics: OperatorMetrics, *, port: int = 9091, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a background thread."""
    start_http_server(port, addr=addr, registry=metrics.registry)
