"""A discrete-event model of one Celery worker pool under an autoscaler.

The model
---------
Tasks arrive per a ``Trace`` and wait in one FIFO queue (the broker list). A pool runs
replicas of ``concurrency`` slots. A new replica costs from the moment it is created but
serves only after ``startup_delay`` (scheduling, image, ``celery worker`` boot). A free slot
takes the head of the queue; idle slots are served first-come first-served, which is what
Redis's ``BRPOP`` does for blocked workers. A replica chosen for removal stops taking work at
once (Celery's warm shutdown) and leaves when its last task finishes; if its grace period
runs out first, its running tasks are interrupted, counted, and redelivered to the front of
the queue (late acks), and the partial work is still paid for and counted as waste. The grace
period is the pool's (``SimSettings.grace_period``, by default the WorkerPool's own default
``shutdown.gracePeriodSeconds``), the same for every policy: it belongs to the pod template,
not to the autoscaler.

An autoscaler is a ``Controller``: it is evaluated every ``interval`` seconds on a
``Snapshot`` of the queue that is either live (``scrape_interval == 0``, KEDA reading Redis)
or the last sample of a scrape loop (Prometheus, the exporter), so the metric reaches it late
exactly as in a cluster. A snapshot also carries how many replicas hold running tasks and
how long the oldest running task has run, which Tide's operator learns from its busy probe
(``celery inspect active`` per worker, with each task's start): that count is of the moment
of the evaluation, since the operator asks the workers when it decides, not at the scrape.
Tide's controller uses them only where the operator has them, on a decision to scale down
(``baselines.TideController``).

Which replicas go on scale-in follows the ReplicaSet controller's ranking
(``ActivePodsWithRanks.Less`` in ``pkg/controller/controller_utils.go``), the rules that
apply to one Deployment's pods on equal nodes: not-ready pods first; then the lower
``controller.kubernetes.io/pod-deletion-cost``; then the pod ready for less time, compared on
a logarithmic scale (``LogarithmicScaleDown``, on by default since 1.22: pods ready for 40 s
and 50 s rank equal); then the newer pod, on the same scale; then a pseudo-random order (the
controller compares UIDs). Tide's operator sets the cost from each worker's running tasks
before it scales down (``idle_first``), so idle workers go first; the baselines set no cost, so
a busy pod goes as readily as an idle one.

Why it is fast
--------------
Arrivals are a sorted list merged with a heap of the few timed events (completions, pod
readiness, evaluations, scrapes, samples, grace deadlines), so the cost is a handful of
Python operations per task and per tick, never a loop per second or per slot. A 24-hour
trace of a million tasks replays in seconds (``bench/bench_simulator.py`` measures it).

What it reports
---------------
``SimResult`` holds each task's wait (arrival to the start of the attempt that finished),
interrupted attempts and the slot-seconds they wasted, replica-seconds counted two ways
(summed lifetimes and the integral of the live count, which must agree), busy slot-seconds,
the trace's own work (the cost floor: what a pool at 100% utilisation that never lost a task
would pay), every scale event, which replicas scale-in took (idle, busy and drained, busy and
killed at the grace period), and time series sampled at a fixed step for plots.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tide_operator.resources.spec import ShutdownSpec
from tide_operator.simulation.traces import Trace

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "Controller",
    "SimResult",
    "SimSettings",
    "Snapshot",
    "simulate",
    "whole_replica_seconds",
]

#: The WorkerPool's default ``shutdown.gracePeriodSeconds``, read from the resource model so
#: that the simulator and the CRD cannot disagree.
DEFAULT_GRACE_PERIOD: float = float(ShutdownSpec().grace_period_seconds)

# Event kinds; the number also orders simultaneous events: a slot freed at time t is free
# before a pod that became ready at t, and both before a scrape or an evaluation at t.
_DONE, _READY, _GRACE, _SCRAPE, _TICK, _SAMPLE = range(6)
# A policy that never finishes the work (a pool that keeps killing a long task, say) must not
# run the simulation forever: two hours past the trace it is cut off and reports what is left.
_MAX_OVERRUN_SECONDS = 2 * 3600.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a metric source reports about the queue at time ``at``."""

    at: float
    waiting: int
    inflight: int
    oldest_age: float
    completed_total: int
    # Replicas (not draining) that hold at least one running task: the busy probe's answer.
    busy_replicas: int | None = None
    # Replicas (not draining) past their startup: what a Value target's HPA scales.
    ready_replicas: int | None = None
    # How long the longest-running task has run (the busy probe reads task start times).
    oldest_running_age: float | None = None


class Controller(Protocol):
    """An autoscaler as the simulator sees it."""

    @property
    def name(self) -> str: ...
    @property
    def interval(self) -> float:
        """Seconds between evaluations."""

    @property
    def scrape_interval(self) -> float:
        """Seconds between metric samples; 0 reads the queue live at each evaluation."""

    @property
    def scrape_phase(self) -> float:
        """Offset of the first sample, which sets how old a value is when acted on."""

    @property
    def idle_first(self) -> bool:
        """Whether the controller sets pod-deletion-cost from each worker's running tasks."""

    @property
    def consolidates(self) -> bool:
        """Whether a busy worker chosen for scale-in is told to stop consuming instead of
        being deleted (Celery's ``cancel_consumer``): it finishes its tasks with no deadline,
        takes no new ones, is removed once idle, and is reopened (``add_consumer``) before a
        new replica is started."""

    @property
    def initial_replicas(self) -> int: ...

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class SimSettings:
    """What every policy shares in one comparison."""

    concurrency: int = 4
    startup_delay: float = 20.0
    max_wait: float = 60.0
    max_replicas: int = 50
    # The pods' terminationGracePeriodSeconds, for every policy alike; ``math.inf`` models a
    # grace period longer than any task.
    grace_period: float = DEFAULT_GRACE_PERIOD
    static_replicas: int | None = None


@dataclass
class SimResult:
    policy: str
    trace: str
    concurrency: int
    max_wait: float
    tasks: int
    completed: int
    waits: npt.NDArray[np.float64]
    arrivals: npt.NDArray[np.float64]
    interrupted: int
    wasted_slot_seconds: float
    work_seconds: float
    replica_seconds: float
    replica_seconds_integral: float
    busy_slot_seconds: float
    end_time: float
    scale_events: list[tuple[float, int, int]] = field(default_factory=list)
    series_t: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    series_waiting: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    series_inflight: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    series_replicas: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    reasons: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    # Replicas removed by scale-in: idle at once, busy and drained within the grace period,
    # busy and killed at its end.
    removed_idle: int = 0
    removed_drained: int = 0
    removed_killed: int = 0
    # A reference beside the floor, not a goal: ``whole_replica_seconds`` of the trace.
    ideal_replica_seconds: float = 0.0

    @property
    def floor_replica_seconds(self) -> float:
        """The cost floor: the trace's own work on fully used replicas, nothing lost."""
        return self.work_seconds / self.concurrency


def whole_replica_seconds(
    arrivals: npt.NDArray[np.float64], durations: npt.NDArray[np.float64], *, concurrency: int
) -> float:
    """What a clairvoyant pool of whole replicas would pay: a reference, not the floor.

    Every task starts the moment it arrives, replicas start and stop instantly, and tasks
    are packed perfectly, so at each instant the pool holds ``ceil(running / concurrency)``
    replicas. No autoscaler can do better in whole replicas without making tasks wait; the
    floor (``work / concurrency``) counts fractions of a replica, which is why a quiet hour
    carrying one task at a time costs four times its share of the floor here.
    """
    if len(arrivals) == 0:
        return 0.0
    times = np.concatenate([arrivals, arrivals + durations])
    # Ends before starts at the same instant: a slot freed at t is reused at t.
    steps = np.concatenate([np.ones(len(arrivals)), -np.ones(len(arrivals))])
    order = np.lexsort((steps, times))
    times, running = times[order], np.cumsum(steps[order])
    replicas = np.ceil(running[:-1] / concurrency - 1e-9)
    return float(np.sum(replicas * np.diff(times)))


class _Replica:
    __slots__ = ("cordoned", "created", "draining", "ended", "ident", "ready", "running")

    def __init__(self, ident: int, created: float, ready: float) -> None:
        self.ident = ident
        self.created = created
        self.ready = ready
        self.ended: float | None = None
        self.draining = False
        # Told to stop consuming (not deleted): drains with no grace deadline.
        self.cordoned = False
        self.running: set[int] = set()


def _log_bucket(seconds: float) -> int:
    """The ReplicaSet's logarithmic comparison of durations: same power of two, same rank."""
    return math.floor(math.log2(seconds)) if seconds >= 1.0 else 0


def _uid(replica: _Replica) -> int:
    # A fixed pseudo-random order standing in for the pods' UIDs (Knuth's multiplicative hash).
    return (replica.ident * 2654435761) % 2**32


def simulate(trace: Trace, controller: Controller, *, settings: SimSettings) -> SimResult:
    """Replay ``trace`` through ``controller``; deterministic for a given trace."""
    arrivals: list[float] = trace.arrivals.tolist()
    durations: list[float] = trace.durations.tolist()
    n = len(arrivals)
    slots = settings.concurrency
    startup = settings.startup_delay
    grace = settings.grace_period
    horizon = trace.horizon

    started_at = [math.nan] * n
    attempt = [0] * n
    replica_of: list[_Replica | None] = [None] * n
    queue: deque[int] = deque()
    tokens: deque[_Replica] = deque()  # one entry per idle slot, oldest idle first
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0
    replicas: list[_Replica] = []
    active: list[_Replica] = []  # not draining: the controller's "current replicas"
    cordoned: list[_Replica] = []  # told to stop consuming, still finishing tasks
    consolidates = bool(getattr(controller, "consolidates", False))
    inflight = 0
    completed = 0
    interrupted = 0
    busy = 0.0
    wasted = 0.0
    # Scale-in victims: [idle, drained in time, killed at the grace period].
    removed = [0, 0, 0]
    alive = 0
    area = 0.0
    area_at = 0.0
    scale_events: list[tuple[float, int, int]] = []
    sample_t: list[float] = []
    sample_waiting: list[int] = []
    sample_inflight: list[int] = []
    sample_replicas: list[int] = []

    def push(at: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, kind, seq, a, b))

    def start(task: int, replica: _Replica, now: float) -> None:
        nonlocal inflight
        started_at[task] = now
        replica_of[task] = replica
        replica.running.add(task)
        inflight += 1
        push(now + durations[task], _DONE, task, attempt[task])

    def add_replica(now: float, ready: float) -> None:
        nonlocal alive, area, area_at
        area += alive * (now - area_at)
        area_at = now
        alive += 1
        replica = _Replica(len(replicas), now, ready)
        replicas.append(replica)
        active.append(replica)
        push(ready, _READY, replica.ident)

    def end_replica(replica: _Replica, now: float) -> None:
        nonlocal alive, area, area_at
        area += alive * (now - area_at)
        area_at = now
        alive -= 1
        replica.ended = now

    def dispatch(now: float) -> None:
        while queue and tokens:
            replica = tokens.popleft()
            if not replica.draining:
                start(queue.popleft(), replica, now)

    def holding() -> int:
        # Replicas (not draining) with a running task: what the busy probe counts.
        return sum(1 for r in active if r.running)

    def snapshot(now: float) -> Snapshot:
        oldest = now - arrivals[queue[0]] if queue else 0.0
        ready = sum(1 for r in active if r.ready <= now)
        first = min((started_at[t] for r in active for t in r.running), default=now)
        return Snapshot(now, len(queue), inflight, oldest, completed, holding(), ready, now - first)

    def victims(count: int, now: float) -> list[_Replica]:
        # The ReplicaSet's ranking (see the module docstring); pods of one Deployment share
        # their node's rank here, and restarts never happen, so those rules tie.
        def rank(replica: _Replica) -> tuple[bool, int, int, int, int]:
            ready = replica.ready <= now
            cost = len(replica.running) if controller.idle_first else 0
            ready_for = _log_bucket(now - replica.ready) if ready else 0
            return (ready, cost, ready_for, _log_bucket(now - replica.created), _uid(replica))

        return sorted(active, key=rank)[:count]

    def reopen(replica: _Replica, now: float) -> None:
        # add_consumer: the worker takes work again with the slots its tasks leave free.
        replica.draining = replica.cordoned = False
        cordoned.remove(replica)
        active.append(replica)
        stale = [t for t in tokens if t is replica]
        for t in stale:
            tokens.remove(t)
        for _ in range(slots - len(replica.running)):
            tokens.append(replica)
        dispatch(now)

    def scale(target: int, now: float) -> None:
        current = len(active)
        if target == current:
            return
        if target > current:
            missing = target - current
            # A cordoned worker is up and warm: reopen the busiest first, before any new pod.
            for replica in sorted(cordoned, key=lambda r: -len(r.running))[:missing]:
                reopen(replica, now)
                missing -= 1
            for _ in range(missing):
                add_replica(now, now + startup)
            return
        for replica in victims(current - target, now):
            replica.draining = True
            active.remove(replica)
            if not replica.running:
                removed[0] += 1
                end_replica(replica, now)
            elif consolidates:
                replica.cordoned = True
                cordoned.append(replica)
            elif math.isfinite(grace):
                push(now + grace, _GRACE, replica.ident)

    for _ in range(controller.initial_replicas):
        # The pool exists before the trace starts: its first replicas are already serving.
        add_replica(0.0, 0.0)
    sample_every = max(5.0, horizon / 2000)
    push(0.0, _TICK)
    push(0.0, _SAMPLE)
    if controller.scrape_interval > 0:
        push(controller.scrape_phase, _SCRAPE)
    scraped = snapshot(0.0)
    reasons: dict[str, int] = {}

    i = 0
    now = 0.0
    last_done = 0.0
    limit = horizon + _MAX_OVERRUN_SECONDS
    while True:
        next_arrival = arrivals[i] if i < n else math.inf
        if heap and heap[0][0] <= next_arrival:
            now, kind, _, a, b = heap[0]
            if completed == n and now >= horizon:
                break
            if now > limit:
                break
            heapq.heappop(heap)
        elif i < n:
            now = next_arrival
            task = i
            i += 1
            while tokens:
                replica = tokens.popleft()
                if not replica.draining:
                    start(task, replica, now)
                    break
            else:
                queue.append(task)
            continue
        else:
            break

        if kind == _DONE:
            if attempt[a] != b:
                continue  # the attempt was interrupted and redelivered
            owner = replica_of[a]
            assert owner is not None
            replica = owner
            replica.running.discard(a)
            inflight -= 1
            completed += 1
            busy += durations[a]
            last_done = now
            if replica.draining:
                if not replica.running and not replica.cordoned:
                    removed[1] += 1
                    end_replica(replica, now)
                # A cordoned replica that finished stays until the operator's next step
                # finds it idle (the busy probe) and removes it.
            elif queue:
                start(queue.popleft(), replica, now)
            else:
                tokens.append(replica)
        elif kind == _READY:
            replica = replicas[a]
            if replica.draining:
                continue
            for _ in range(slots):
                if queue:
                    start(queue.popleft(), replica, now)
                else:
                    tokens.append(replica)
        elif kind == _GRACE:
            replica = replicas[a]
            if replica.ended is not None:
                continue
            # Oldest first to the front, so redelivered tasks keep their arrival order.
            removed[2] += 1
            for task in sorted(replica.running, reverse=True):
                interrupted += 1
                busy += now - started_at[task]
                wasted += now - started_at[task]
                attempt[task] += 1
                inflight -= 1
                queue.appendleft(task)
            replica.running.clear()
            end_replica(replica, now)
            dispatch(now)
        elif kind == _SCRAPE:
            scraped = snapshot(now)
            push(now + controller.scrape_interval, _SCRAPE)
        elif kind == _TICK:
            seen = scraped if controller.scrape_interval > 0 else snapshot(now)
            if controller.idle_first and seen is not None:
                # The operator asks the workers which hold tasks when it would scale down
                # (the busy probe, then pod-deletion-cost): that count is of now, not of the
                # last scrape.
                seen = replace(seen, busy_replicas=holding())
            target = controller.evaluate(snapshot=seen, current=len(active), now=now)
            # Scale events are changes of the Deployment's spec.replicas, which counts the
            # cordoned replicas too: cordoning or reopening one moves nothing there.
            before = len(active) + len(cordoned)
            scale(max(0, target), now)
            for replica in [r for r in cordoned if not r.running]:
                # Found idle by this step's probe and not reopened: the ReplicaSet's first
                # pick (deletion cost -1).
                removed[1] += 1
                replica.cordoned = False
                cordoned.remove(replica)
                end_replica(replica, now)
            after = len(active) + len(cordoned)
            if after != before:
                scale_events.append((now, before, after))
            push(now + controller.interval, _TICK)
        else:  # _SAMPLE
            sample_t.append(now)
            sample_waiting.append(len(queue))
            sample_inflight.append(inflight)
            sample_replicas.append(len(active) + len(cordoned))
            push(now + sample_every, _SAMPLE)

    # Charge until the work is done; a run cut off at the overrun limit is charged to the cut.
    end_time = max(horizon, last_done) if completed == n else max(horizon, now)
    for task in queue:
        # Never started (or interrupted and never restarted): no wait to report.
        started_at[task] = math.nan
    for replica in replicas:
        if replica.ended is None:
            end_replica(replica, end_time)
    area += alive * (end_time - area_at)
    lifetimes = sum((r.ended if r.ended is not None else end_time) - r.created for r in replicas)
    started = np.array(started_at, dtype=np.float64)
    reasons_of = getattr(controller, "reasons", None)
    if isinstance(reasons_of, dict):
        reasons = {str(k): int(v) for k, v in reasons_of.items()}
    return SimResult(
        policy=controller.name,
        trace=trace.name,
        concurrency=slots,
        max_wait=settings.max_wait,
        tasks=n,
        completed=completed,
        waits=started - trace.arrivals,
        arrivals=trace.arrivals,
        interrupted=interrupted,
        wasted_slot_seconds=wasted,
        work_seconds=float(trace.durations.sum()),
        replica_seconds=lifetimes,
        replica_seconds_integral=area,
        busy_slot_seconds=busy,
        end_time=end_time,
        scale_events=scale_events,
        series_t=np.array(sample_t),
        series_waiting=np.array(sample_waiting, dtype=np.float64),
        series_inflight=np.array(sample_inflight, dtype=np.float64),
        series_replicas=np.array(sample_replicas, dtype=np.float64),
        reasons=reasons,
        removed_idle=removed[0],
        removed_drained=removed[1],
        removed_killed=removed[2],
        ideal_replica_seconds=whole_replica_seconds(
            trace.arrivals, trace.durations, concurrency=slots
        ),
    )
