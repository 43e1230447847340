"""Conservation laws of the simulator: tasks, replica-seconds, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tide_operator.simulation.baselines import (
    EXTRA_POLICIES,
    POLICIES,
    TideController,
    make_controller,
)
from tide_operator.simulation.report import count_reversals, summarize
from tide_operator.simulation.simulator import SimResult, SimSettings, Snapshot, simulate
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
    """The model can fail a policy: KEDA's scale-in kills tasks longer than the grace period,
    and the work they did is waste, not part of the floor; Tide keeps busy replicas."""
    settings = SimSettings(max_replicas=20, grace_period=30.0)
    trace = small_trace(1, long_tasks=True)
    keda = run(trace, "keda-tuned", settings)
    assert keda.interrupted > 0
    assert keda.removed_killed > 0
    assert keda.wasted_slot_seconds > 0
    assert keda.work_seconds == pytest.approx(float(trace.durations.sum()))
    assert keda.busy_slot_seconds == pytest.approx(keda.work_seconds + keda.wasted_slot_seconds)
    tide = run(trace, "tide", settings)
    assert tide.interrupted == 0
    assert tide.removed_killed == 0


def test_default_grace_is_the_workerpools() -> None:
    from tide_operator.resources.spec import ShutdownSpec

    assert SimSettings().grace_period == ShutdownSpec().grace_period_seconds == 300


def test_long_tasks_at_the_default_grace() -> None:
    """Eight-minute tasks outlast the 300 s grace: the baselines cut them, Tide does not."""
    settings = SimSettings()
    trace = builtin_trace("long-tasks", seed=0)
    assert run(trace, "tide", settings).interrupted == 0
    assert run(trace, "keda-default", settings).interrupted > 0


class _Scripted:
    """A controller that plays a fixed list of sizes, for the scale-in ranking."""

    name = "scripted"
    interval = 10.0
    scrape_interval = 0.0
    scrape_phase = 0.0
    initial_replicas = 0

    def __init__(self, sizes: dict[float, int], *, idle_first: bool) -> None:
        self.sizes = sizes
        self.idle_first = idle_first

    def evaluate(self, *, snapshot: object, current: int, now: float) -> int:
        return self.sizes.get(now, current)


def test_scale_in_follows_the_replicaset_ranking() -> None:
    """ActivePodsWithRanks: among ready pods of equal cost the one ready for the shortest time
    goes, whatever it runs; with pod-deletion-cost from the running tasks an idle one goes."""
    # Replicas created at 0, 100 and 200 s (ready 20 s later). Nine tasks at 230 s take the
    # idle slots oldest-idle first: four on each of the first two, the ninth (500 s) on the
    # newest. The short ones end at 231 s; at 240 s the pool goes 3 → 2.
    arrivals = np.full(9, 230.0) + np.arange(9) * 0.01
    durations = np.array([1.0] * 8 + [500.0])
    trace = Trace("ranking", arrivals, durations, 900.0)
    settings = SimSettings(concurrency=4, startup_delay=20.0, grace_period=30.0)
    sizes = {0.0: 1, 100.0: 2, 200.0: 3, 240.0: 2}
    plain = simulate(trace, _Scripted(sizes, idle_first=False), settings=settings)
    ranked = simulate(trace, _Scripted(sizes, idle_first=True), settings=settings)
    # No cost: the newest pod goes and its 500 s task is cut at the 30 s grace period.
    assert (plain.removed_idle, plain.removed_killed, plain.interrupted) == (0, 1, 1)
    # Costs set: an idle pod goes and nothing is cut.
    assert (ranked.removed_idle, ranked.removed_killed, ranked.interrupted) == (1, 0, 0)


def test_flaps_are_reversals_within_300_seconds() -> None:
    from tide_operator.simulation.report import count_flaps

    # up at 0, down at 100 (flap), up at 500 (reversal, not a flap), down at 700 (flap).
    events = [(0.0, 1, 2), (100.0, 2, 1), (500.0, 1, 3), (700.0, 3, 2)]
    assert count_reversals(events) == 3
    assert count_flaps(events) == 2


@pytest.mark.parametrize(
    ("arrivals", "durations", "expected"),
    [
        # One task of 10 s alone: one whole replica for 10 s (the floor says 2.5 at 4 slots).
        ([0.0], [10.0], 10.0),
        # Four overlapping tasks fit one replica: 10 s; a fifth makes two for its 4 s.
        ([0.0, 0.0, 0.0, 0.0], [10.0] * 4, 10.0),
        ([0.0, 0.0, 0.0, 0.0, 3.0], [10.0] * 4 + [4.0], 14.0),
        # A slot freed at t is reused at t: back to back tasks never need a second replica.
        ([0.0, 5.0], [5.0, 5.0], 10.0),
        # A gap costs nothing: the clairvoyant pool is at zero between tasks.
        ([0.0, 100.0], [1.0, 1.0], 2.0),
    ],
)
def test_whole_replica_reference(
    arrivals: list[float], durations: list[float], expected: float
) -> None:
    from tide_operator.simulation.simulator import whole_replica_seconds

    got = whole_replica_seconds(np.array(arrivals), np.array(durations), concurrency=4)
    assert got == pytest.approx(expected)


def test_whole_replica_reference_is_reported(sim_settings: SimSettings) -> None:
    # Between the floor and what any policy paid: no whole-replica pool pays less.
    trace = builtin_trace("steady", seed=0)
    summary = summarize(run(trace, "tide", sim_settings))
    assert 1.0 <= summary.ideal_vs_floor <= summary.cost_vs_floor


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


HEADER_CASES = [
    # The original spelling.
    "arrival,duration,queue",
    # Units in the names, as exports from a metrics store write them.
    "arrival_s,duration_s,queue",
    # A timestamp and a runtime, as Celery events and Flower's task list call them.
    "timestamp,runtime,queue",
    # Capitals and spaces around the names.
    " Arrival , Duration , Queue ",
]


@pytest.mark.parametrize("header", HEADER_CASES)
def test_per_task_header_spellings(tmp_path: object, header: str) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tasks.csv"
    path.write_text(f"{header}\n105.0,2.0,default\n100.0,1.5,default\n101.0,9.0,reports\n")
    trace = load_trace(path)
    assert trace.arrivals.tolist() == [0.0, 1.0, 5.0]
    assert trace.durations.tolist() == [1.5, 9.0, 2.0]
    assert load_trace(path, queue="default").tasks == 2


def test_iso_timestamps(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tasks.csv"
    path.write_text("timestamp,duration\n2026-01-01T00:00:10Z,1\n2026-01-01T00:00:00+00:00,2\n")
    assert load_trace(path).arrivals.tolist() == [0.0, 10.0]


BAD_FILES = [
    # Neither form: the message names what it found and what it expects, on one line.
    ("when,how_long\n1,2\n", "found columns [when, how_long]; expected per-task arrival"),
    # A value that is not a number says which line and column.
    ("arrival,duration\n1,fast\n", "line 2: column 'duration' is 'fast'"),
    # Durations must be positive.
    ("arrival,duration\n1,0\n", "durations must be positive"),
    # An empty file.
    ("", "found columns [no header]"),
    # A header and no rows.
    ("arrival,duration\n", "no tasks in the file"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_csv_is_explained(tmp_path: object, text: str, message: str) -> None:
    from pathlib import Path

    from tide_operator.simulation.traces import TraceFormatError

    path = Path(str(tmp_path)) / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError) as raised:
        load_trace(path)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_simulate_exits_2_with_one_line(tmp_path: object) -> None:
    """``tide simulate`` on a bad file: exit status 2, one line on stderr, no traceback."""
    from pathlib import Path

    from click.testing import CliRunner

    from tide_operator.simulation.cli import simulate as command

    path = Path(str(tmp_path)) / "bad.csv"
    path.write_text("when,how_long\n1,2\n")
    result = CliRunner().invoke(
        command, ["--trace", str(path), "--no-plot", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert "when, how_long" in lines[0]
    assert "Traceback" not in result.output


def test_tide_meets_max_wait_on_steady_trace(sim_settings: SimSettings) -> None:
    """A regression guard on the policy itself: a steady stream is served well and cheaply."""
    trace = builtin_trace("steady", seed=0)
    summary = summarize(run(trace, "tide", sim_settings))
    assert summary.p99_wait < sim_settings.max_wait
    assert summary.utilisation >= 0.7
    assert math.isfinite(summary.cost_vs_floor)


def test_service_time_of_eight_minute_tasks() -> None:
    """Decayed sums see long tasks: Little's law over one minute read ~95 s for ~480 s tasks."""
    from tide_operator.simulation.baselines import TideController
    from tide_operator.simulation.traces import seeded_rng

    rng = seeded_rng(2, "eight-minutes")
    arrivals = np.sort(rng.random(120) * 7200.0)
    durations = 480.0 * rng.lognormal(0.0, 0.1, 120)
    trace = Trace("eight-minutes", arrivals, durations, 7200.0)
    settings = SimSettings()
    controller = make_controller("tide", settings=settings, trace=trace)
    assert isinstance(controller, TideController)
    result = simulate(trace, controller, settings=settings)
    assert result.interrupted == 0
    assert controller.state.service_time is not None
    assert controller.state.service_time == pytest.approx(float(durations.mean()), rel=0.15)


def test_tide_asks_the_workers_only_when_it_would_scale_down() -> None:
    """As the operator's step: the metric source knows no busy count or task ages; the busy
    probe is asked, and its task ages learnt, only on a decision to scale down."""
    controller = make_controller(
        "tide", settings=SimSettings(), trace=small_trace(0, long_tasks=False)
    )
    assert isinstance(controller, TideController)

    def tick(at: float, inflight: int, current: int) -> int:
        # Every worker holds a task, the oldest has run 400 s; nothing completes.
        snapshot = Snapshot(
            at, 0, inflight, 0.0, 0, busy_replicas=current, oldest_running_age=400.0
        )
        return controller.evaluate(snapshot=snapshot, current=current, now=at)

    # A pool at 4 workers with 16 tasks in flight holds: nobody is asked, no age is learnt.
    assert tick(0.0, 16, 4) == 4
    assert tick(5.0, 16, 4) == 4
    assert controller.state.longest_running is None
    # The work ends and the window passes: the scale-down asks, and learns the 400 s task,
    # and every worker still holding a task stays.
    replicas = 4
    for step in range(2, 12):
        replicas = tick(5.0 * step, 4, replicas)
    assert controller.state.longest_running == 400.0
    assert replicas == 4
