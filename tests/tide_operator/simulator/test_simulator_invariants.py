"""Conservation laws of the simulator: tasks, replica-seconds, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tide_operator.simulation.baselines import EXTRA_POLICIES, POLICIES, make_controller
from tide_operator.simulation.report import count_reversals, summarize
from tide_operator.simulation.simulator import SimResult, SimSettings, simulate
from tide_operator.simulation.traces import Trace, builtin_trace, load_trace

ALL_POLICIES = POLICIES + EXTRA_POLICIES


def run(trace: Trace, policy: str, settings: SimSettings) -> SimResult:
    return simulate(
        trace, make_controller(policy, settings=settings, trace=trace), settings=settings
    )


def small_trace(seed: int, *, long_tasks: bool) -> Trace:
    rng = np.random.default_rng(seed)
    n = 400
    arrivals = np.sort(rng.random(n) * 1800.0)
    durations = rng.lognormal(0.5, 1.0, n)
    if long_tasks:
        # A few tasks longer than Kubernetes' 30 s grace period, to provoke interruptions.
        durations[rng.random(n) < 0.05] = 120.0
    return Trace("small", arrivals, durations, 1800.0)


def check_conservation(result: SimResult, trace: Trace, settings: SimSettings) -> None:
    waits = result.waits
    finished = ~np.isnan(waits)
    # Every task finished exactly once (interrupted attempts are counted, not completed).
    assert result.completed == trace.tasks == int(finished.sum())
    assert result.interrupted >= 0
    assert np.all(waits[finished] >= -1e-9)
    # Lifetimes summed per replica equal the integral of the live count over time.
    assert result.replica_seconds == pytest.approx(result.replica_seconds_integral, rel=1e-9)
    # Work done fits in the capacity paid for, and at least the trace's work was done.
    capacity = result.replica_seconds * settings.concurrency
    assert result.busy_slot_seconds <= capacity + 1e-6
    assert result.busy_slot_seconds >= float(trace.durations.sum()) - 1e-6


# Each example replays a trace; a few dozen cover the policies and shapes in seconds.
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(ALL_POLICIES),
    long_tasks=st.booleans(),
    startup=st.floats(0, 60),
)
def test_conservation(seed: int, policy: str, long_tasks: bool, startup: float) -> None:
    config = SimSettings(startup_delay=startup, max_replicas=20)
    trace = small_trace(seed, long_tasks=long_tasks)
    check_conservation(run(trace, policy, config), trace, config)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_conservation_on_builtin_trace(policy: str, sim_settings: SimSettings) -> None:
    trace = builtin_trace("spike", seed=3)
    check_conservation(run(trace, policy, sim_settings), trace, sim_settings)


def test_baseline_scale_in_interrupts_long_tasks() -> None:
    """The model can fail a policy: KEDA's scale-in kills tasks longer than the grace period."""
    settings = SimSettings(max_replicas=20)
    trace = small_trace(1, long_tasks=True)
    assert run(trace, "keda-tuned", settings).interrupted > 0
    assert run(trace, "tide", settings).interrupted == 0


def test_same_seed_same_result(sim_settings: SimSettings) -> None:
    first = summarize(run(builtin_trace("bursts", seed=7), "tide", sim_settings))
    second = summarize(run(builtin_trace("bursts", seed=7), "tide", sim_settings))
    other = summarize(run(builtin_trace("bursts", seed=8), "tide", sim_settings))
    strip = {"wall_seconds": 0.0}
    assert {**first.__dict__, **strip} == {**second.__dict__, **strip}
    assert {**first.__dict__, **strip} != {**other.__dict__, **strip}


def test_startup_delay_is_respected() -> None:
    """From zero, the first task waits at least the startup delay (plus the metric delay)."""
    trace = Trace("one", np.array([10.0]), np.array([1.0]), 600.0)
    for policy in ("tide", "keda-tuned"):
        result = run(trace, policy, SimSettings(startup_delay=25.0))
        assert result.waits[0] >= 25.0


def test_static_pool_is_never_scaled() -> None:
    trace = builtin_trace("spike", seed=0)
    result = run(trace, "static", SimSettings(static_replicas=3))
    assert result.scale_events == []
    assert result.replica_seconds == pytest.approx(3 * result.end_time)


def test_reversals_count_direction_changes() -> None:
    # up, up, down (1), up (2), down (3)
    events = [(0.0, 1, 2), (1.0, 2, 3), (2.0, 3, 1), (3.0, 1, 4), (4.0, 4, 0)]
    assert count_reversals(events) == 3


@pytest.mark.parametrize("name", ["steady", "spike", "bursts", "hourly-batch", "noisy"])
def test_builtin_traces_are_deterministic_and_sorted(name: str) -> None:
    a, b = builtin_trace(name, seed=5), builtin_trace(name, seed=5)
    assert np.array_equal(a.arrivals, b.arrivals)
    assert np.array_equal(a.durations, b.durations)
    assert np.all(np.diff(a.arrivals) >= 0)
    assert a.arrivals.max() < a.horizon


def test_load_per_task_csv(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tasks.csv"
    path.write_text(
        "arrival,duration,queue\n105.0,2.0,default\n100.0,1.5,default\n101.0,9.0,reports\n"
    )
    trace = load_trace(path)
    assert trace.arrivals.tolist() == [0.0, 1.0, 5.0]
    assert trace.durations.tolist() == [1.5, 9.0, 2.0]
    only = load_trace(path, queue="default")
    assert only.tasks == 2


def test_load_per_minute_csv(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "minutes.csv"
    path.write_text("minute,count\n0,10\n1,0\n2,30\n")
    trace = load_trace(path, durations="fixed:3", seed=1)
    assert trace.tasks == 40
    assert trace.horizon == 180.0
    assert np.all(trace.durations == 3.0)
    assert int(np.sum(trace.arrivals < 60)) == 10
    assert int(np.sum((trace.arrivals >= 60) & (trace.arrivals < 120))) == 0
    assert (
        load_trace(path, durations="fixed:3", seed=1).arrivals.tolist() == trace.arrivals.tolist()
    )


def test_bad_csv_is_explained(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "bad.csv"
    path.write_text("when,how_long\n1,2\n")
    with pytest.raises(ValueError, match="expected a header"):
        load_trace(path)


def test_tide_meets_max_wait_on_steady_trace(sim_settings: SimSettings) -> None:
    """A regression guard on the policy itself: a steady stream is served well and cheaply."""
    trace = builtin_trace("steady", seed=0)
    summary = summarize(run(trace, "tide", sim_settings))
    assert summary.p99_wait < sim_settings.max_wait
    assert summary.utilisation >= 0.7
    assert math.isfinite(summary.cost_vs_floor)
