"""The local autoscaler: the operator's reconcile step, with processes for a Deployment.

Per pool, every ``pollingInterval``, it runs ``tide_operator.reconcile.reconcile_step``,
the very step the operator's per-pool daemon runs, with the operator's ``ExporterSource``
pointed at the local exporter and ``LocalWorkers`` as the scale target. The step reads the
queues, calls the policy and applies the answer; the status and events it returns (which
the operator would patch and post) feed the terminal view and the log here.

With ``policy_name`` set to a baseline (``keda-default``, …) the simulator's model of that
tool decides instead, on the same real workers and the same source: that is how the
benchmark compares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tide.local.pools import LocalPool
from tide.local.workers import LocalWorkers
from tide_operator.adapters.sources import ExporterSource, MetricsUnavailable
from tide_operator.core.policy import Observation, PolicyState
from tide_operator.reconcile.step import PoolEvent, reconcile_step

logger = logging.getLogger("tide.local.autoscaler")


@dataclass
class PoolStatus:
    """What the terminal view shows of a pool: the last reading, decision and events."""

    observation: Observation | None = None
    desired: int = 0
    reason: str = "starting"
    reason_code: str = ""
    error: str = ""
    events: list[PoolEvent] = field(default_factory=list)
    resource_status: Mapping[str, Any] | None = None


@dataclass
class PoolAutoscaler:
    pool: LocalPool
    source: ExporterSource
    workers: LocalWorkers
    policy_name: str = "tide"
    status: PoolStatus = field(default_factory=PoolStatus)
    state: PolicyState = field(default_factory=PolicyState)
    on_step: Callable[[str, PoolStatus], None] | None = None
    _baseline: Any = None

    def __post_init__(self) -> None:
        if self.policy_name != "tide":
            self._baseline = _baseline(self.policy_name, self.pool)

    @property
    def interval(self) -> float:
        if self._baseline is not None:
            return float(self._baseline.interval)
        return self.pool.spec.polling_interval

    async def step(self, now: float) -> None:
        if self._baseline is not None:
            await self._baseline_step(now)
        else:
            result = await reconcile_step(
                spec=self.pool.spec,
                source=self.source,
                target=self.workers,
                state=self.state,
                now=now,
                wall=datetime.now(UTC),
                previous_status=self.status.resource_status,
            )
            self.state = result.state
            self.status.resource_status = result.status
            self.status.error = result.metric_error or ""
            if result.observation is not None:
                self.status.observation = result.observation
            if result.decision is not None:
                self.status.desired = result.decision.replicas
                self.status.reason = result.decision.reason
                self.status.reason_code = result.decision.reason_code
            # What the operator would post as Kubernetes Events: this step's only.
            self.status.events = list(result.events)
        if self.on_step:
            self.on_step(self.pool.name, self.status)

    async def _baseline_step(self, now: float) -> None:
        from tide_operator.simulation.simulator import Snapshot

        current = await self.workers.current()
        try:
            observation: Observation | None = await self.source.observe(self.pool.queues, now=now)
            self.status.error = ""
        except MetricsUnavailable as exc:
            observation, self.status.error = None, str(exc)
        desired = current
        if observation is not None:
            snapshot = Snapshot(
                at=observation.at,
                waiting=observation.waiting,
                inflight=observation.inflight,
                oldest_age=observation.oldest_age or 0.0,
                completed_total=0,
            )
            desired = int(self._baseline.evaluate(snapshot=snapshot, current=current, now=now))
            self.status.observation = observation
        self.status.desired = desired
        self.status.reason = f"{self.policy_name}: {current}→{desired}"
        self.status.reason_code = self.policy_name
        if desired != current:
            await self.workers.scale(desired, reason=self.status.reason)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                # The policy's clock: monotonic, the same one the observations carry.
                await self.step(started)
            except Exception:  # one bad step must not end the pool's loop
                logger.exception("autoscaler step failed for pool %s", self.pool.name)
            delay = max(0.0, self.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


def _baseline(name: str, pool: LocalPool) -> Any:
    import numpy as np

    from tide_operator.simulation.baselines import make_controller
    from tide_operator.simulation.simulator import SimSettings
    from tide_operator.simulation.traces import Trace

    policy = pool.policy
    settings = SimSettings(
        concurrency=pool.concurrency,
        max_replicas=policy.max_replicas,
        max_wait=policy.max_wait_seconds or 60.0,
    )
    # Only the static baseline reads the trace (to size for its peak); live there is none.
    live = Trace(name="live", arrivals=np.empty(0), durations=np.empty(0), horizon=0.0)
    return make_controller(name, settings=settings, trace=live)


def log_step(pool: str, status: PoolStatus) -> None:
    """``--no-ui``: one JSON line per decision, for log pipelines and humans alike."""
    obs = status.observation
    logger.info(
        json.dumps(
            {
                "event": "decision",
                "pool": pool,
                "desired": status.desired,
                "reason_code": status.reason_code,
                "reason": status.reason,
                "waiting": obs.waiting if obs else None,
                "inflight": obs.inflight if obs else None,
                "oldest_age": obs.oldest_age if obs else None,
                "metrics_error": status.error or None,
                "events": [f"{e.type} {e.reason}: {e.message}" for e in status.events],
            },
            ensure_ascii=False,
        )
    )
