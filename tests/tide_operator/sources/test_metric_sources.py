"""PrometheusSource against a real Prometheus, ExporterSource against a served exposition."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_harness import Exposition

from tide_operator.adapters.sources import (
    ExporterSource,
    MetricsUnavailable,
    PrometheusSource,
    parse_queue_figures,
    queue_regex,
)
from tide_operator.core.policy import (
    Observation,
    PolicyConfig,
    PolicyState,
    QueueObservation,
    decide,
)
from tide_operator.resources.spec import PrometheusQueries

pytestmark = pytest.mark.timeout(90)


def text(
    *,
    stale: int = 0,
    completed: dict[str, int] | None = None,
    **queues: tuple[int, int, int, float],
) -> str:
    lines = []
    for series, index in (
        ("celery_queue_length", 0),
        ("celery_queue_inflight", 1),
        ("celery_queue_scheduled", 2),
        ("celery_queue_oldest_age_seconds", 3),
    ):
        lines.append(f"# TYPE {series} gauge")
        lines += [f'{series}{{queue_name="{q}"}} {v[index]}' for q, v in queues.items()]
    if completed is not None:
        # As prometheus-client writes a counter: the TYPE line and sample both with "_total".
        lines.append("# TYPE celery_queue_completed_total counter")
        lines += [
            f'celery_queue_completed_total{{queue_name="{q}"}} {n}' for q, n in completed.items()
        ]
    lines += ["# TYPE tide_exporter_stale gauge", f"tide_exporter_stale {stale}"]
    # Tide's exporter always publishes its health: the default queries keep only the
    # targets that do (celery-exporter publishes the queue names too).
    lines += ["# TYPE tide_exporter_up gauge", f"tide_exporter_up {1 - stale}", ""]
    return "\n".join(lines)


async def observe_until(
    source: PrometheusSource, queues: list[str], expected: Observation, *, timeout: float = 20
) -> Observation:
    """Prometheus scrapes every second: wait (with a deadline) for the new figures.

    A stale flag left by an earlier test's exposition clears at the next scrape, so
    ``MetricsUnavailable`` is waited out too, and raised only at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = await source.observe(queues, now=1.0)
        except MetricsUnavailable:
            if time.monotonic() > deadline:
                raise
        else:
            if seen == expected or time.monotonic() > deadline:
                return seen
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_a_second_exporter_of_the_same_series_is_not_added(
    prometheus: str, exposition: Exposition, other_exporter: Exposition
) -> None:
    # celery-exporter scraped by the same Prometheus publishes celery_queue_length for the
    # same queues: the default queries read Tide's figures, not their sum.
    exposition.text = text(a=(100, 4, 0, 12.0))
    other_exporter.text = "\n".join(
        [
            "# TYPE celery_queue_length gauge",
            'celery_queue_length{queue_name="a"} 100',
            "# TYPE celery_workers gauge",
            "celery_workers 3",
            "",
        ]
    )
    try:
        async with httpx.AsyncClient() as client:
            source = PrometheusSource(prometheus, client=client, timeout=5)
            want = Observation(at=1.0, waiting=100, inflight=4, scheduled=0, oldest_age=12.0)
            both = f"{prometheus}/api/v1/query"
            # Wait until Prometheus holds both exporters' copies, then read through Tide.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                result = httpx.get(both, params={"query": 'celery_queue_length{queue_name="a"}'})
                if len(result.json()["data"]["result"]) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(result.json()["data"]["result"]) == 2
            assert await observe_until(source, ["a"], want) == want
    finally:
        other_exporter.text = ""


@pytest.mark.asyncio
async def test_a_selector_keeps_one_tide_release_of_several(
    prometheus: str, exposition: Exposition, other_exporter: Exposition
) -> None:
    # A second Tide release (its own broker, a queue of the same name, and stale: its
    # broker is down) scraped by the same Prometheus: without a selector the pool reads
    # the sum and the other release's outage; with it, only its own exporter.
    exposition.text = text(a=(100, 4, 0, 12.0))
    other_exporter.text = text(stale=1, a=(50, 1, 0, 40.0))
    try:
        async with httpx.AsyncClient() as client:
            both = f"{prometheus}/api/v1/query"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                result = httpx.get(both, params={"query": "tide_exporter_up"})
                if len(result.json()["data"]["result"]) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(result.json()["data"]["result"]) == 2
            unselected = PrometheusSource(prometheus, client=client, timeout=5)
            with pytest.raises(MetricsUnavailable, match="stale"):
                await unselected.observe(["a"], now=1.0)
            selected = PrometheusSource(
                prometheus, client=client, timeout=5, selector='job="exporter"'
            )
            want = Observation(at=1.0, waiting=100, inflight=4, scheduled=0, oldest_age=12.0)
            assert await observe_until(selected, ["a"], want) == want
            # And the other release, named by its own selector, reads its own figures.
            other_exporter.text = text(a=(50, 1, 0, 40.0))
            other = PrometheusSource(
                prometheus, client=client, timeout=5, selector='job="celery-exporter"'
            )
            want = Observation(at=1.0, waiting=50, inflight=1, scheduled=0, oldest_age=40.0)
            assert await observe_until(other, ["a"], want) == want
            unselected_sum = await observe_until(
                unselected,
                ["a"],
                Observation(at=1.0, waiting=150, inflight=5, scheduled=0, oldest_age=40.0),
            )
            assert unselected_sum.waiting == 150
    finally:
        other_exporter.text = ""


@pytest.mark.asyncio
async def test_prometheus_sums_the_pools_queues(prometheus: str, exposition: Exposition) -> None:
    exposition.text = text(a=(5, 2, 1, 12.5), b=(3, 1, 0, 40.0), other=(100, 9, 9, 999.0))
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(prometheus, client=client, timeout=5)
        want = Observation(at=1.0, waiting=8, inflight=3, scheduled=1, oldest_age=40.0)
        assert await observe_until(source, ["a", "b"], want) == want
        # A queue nobody has published to has no series: an empty result reads as 0.
        empty = await source.observe(["never-used"], now=2.0)
        assert empty == Observation(at=2.0, waiting=0, inflight=0, scheduled=0, oldest_age=None)


@pytest.mark.asyncio
async def test_prometheus_query_override(prometheus: str, exposition: Exposition) -> None:
    exposition.text = text(a=(5, 2, 1, 12.5))
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(
            prometheus,
            client=client,
            queries=PrometheusQueries(
                waiting='sum(celery_queue_length{queue_name=~"$queues"}) * 10'
            ),
        )
        want = Observation(at=1.0, waiting=50, inflight=2, scheduled=1, oldest_age=12.5)
        assert await observe_until(source, ["a"], want) == want


@pytest.mark.asyncio
async def test_prometheus_reports_a_stale_exporter(prometheus: str, exposition: Exposition) -> None:
    exposition.text = text(stale=1, a=(5, 0, 0, 1.0))
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(prometheus, client=client)
        deadline = time.monotonic() + 20
        error: MetricsUnavailable | None = None
        while error is None and time.monotonic() < deadline:
            try:
                await source.observe(["a"], now=1.0)
            except MetricsUnavailable as exc:
                error = exc
            await asyncio.sleep(0.2)
        assert error is not None
        assert "stale" in str(error)
    exposition.text = text(a=(0, 0, 0, 0.0))


@pytest.mark.asyncio
async def test_prometheus_errors_and_timeouts(prometheus: str, silent_server: str) -> None:
    async with httpx.AsyncClient() as client:
        # A server that never answers: the timeout, not a hang.
        slow = PrometheusSource(silent_server, client=client, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(MetricsUnavailable, match="timed out"):
            await slow.observe(["a"], now=0)
        assert time.monotonic() - started < 5
        # Nothing listening.
        with pytest.raises(MetricsUnavailable, match="unreachable"):
            await PrometheusSource("http://127.0.0.1:9", client=client).observe(["a"], now=0)
        # Invalid PromQL: Prometheus says bad_data.
        broken = PrometheusSource(
            prometheus, client=client, queries=PrometheusQueries(waiting="sum(")
        )
        with pytest.raises(MetricsUnavailable, match="bad_data"):
            await broken.observe(["a"], now=0)


@pytest.mark.asyncio
async def test_exporter_source(exposition: Exposition, silent_server: str) -> None:
    exposition.text = text(a=(4, 1, 0, 2.0), b=(1, 0, 2, 9.0))
    async with httpx.AsyncClient() as client:
        source = ExporterSource(exposition.url.removesuffix("/metrics"), client=client)
        seen = await source.observe(["a", "b"], now=3.0)
        assert seen == Observation(at=3.0, waiting=5, inflight=1, scheduled=2, oldest_age=9.0)
        # A queue the exporter does not export would read as empty: refuse it instead.
        with pytest.raises(MetricsUnavailable, match="does not export queue"):
            await source.observe(["a", "missing"], now=3.0)
        exposition.text = text(stale=1, a=(4, 1, 0, 2.0))
        with pytest.raises(MetricsUnavailable, match="stale"):
            await source.observe(["a"], now=3.0)
        with pytest.raises(MetricsUnavailable, match="timed out"):
            await ExporterSource(silent_server, client=client, timeout=0.3).observe(["a"], now=0)


def test_queue_regex_escapes() -> None:
    # Dots and quotes in queue names must match literally inside a PromQL string.
    assert queue_regex(["a.b", 'c"d']) == 'a\\\\.b|c\\"d'


# ----------------------------------------------------------------- the completion counter

PARSE_ROWS = [
    # prometheus-client's text format: TYPE and sample both carry "_total".
    pytest.param(text(a=(1, 0, 0, 0.0), completed={"a": 12}), {"a": 12.0}, id="text-format"),
    # OpenMetrics-style family name without "_total"; the sample keeps it.
    pytest.param(
        text(a=(1, 0, 0, 0.0)).replace(
            "# TYPE tide_exporter_stale",
            "# TYPE celery_queue_completed counter\n"
            'celery_queue_completed_total{queue_name="a"} 7\n# TYPE tide_exporter_stale',
        ),
        {"a": 7.0},
        id="family-without-total",
    ),
    # celery-exporter, or RabbitMQ without the management API: no series, None.
    pytest.param(text(a=(1, 0, 0, 0.0)), {"a": None}, id="absent"),
]


@pytest.mark.parametrize(("exposition_text", "expected"), PARSE_ROWS)
def test_parse_completed(exposition_text: str, expected: dict[str, float | None]) -> None:
    figures, stale = parse_queue_figures(exposition_text)
    assert {q: f.completed for q, f in figures.items()} == expected
    assert stale is False


@pytest.mark.asyncio
async def test_exporter_source_sums_the_counter(exposition: Exposition) -> None:
    exposition.text = text(
        a=(4, 1, 0, 2.0), b=(1, 0, 2, 9.0), c=(0, 0, 0, 0.0), completed={"a": 30, "b": 12, "c": 5}
    )
    async with httpx.AsyncClient() as client:
        source = ExporterSource(exposition.url, client=client)
        seen = await source.observe(["a", "b"], now=3.0)
        assert seen.completed_total == 42
        assert seen.queues == (QueueObservation("a", 4, 1, 30), QueueObservation("b", 1, 0, 12))
        # One queue: the pool's figures are the queue's, nothing per queue.
        assert (await source.observe(["a"], now=3.5)).queues == ()
        # Without the series the policy must fall back to counts: None, never 0.
        exposition.text = text(a=(4, 1, 0, 2.0))
        assert (await source.observe(["a"], now=4.0)).completed_total is None


@pytest.mark.asyncio
async def test_prometheus_sums_the_counter(prometheus: str, exposition: Exposition) -> None:
    exposition.text = text(
        a=(5, 2, 1, 12.5), b=(3, 1, 0, 40.0), other=(0, 0, 0, 0.0),
        completed={"a": 100, "b": 23, "other": 1000},
    )  # fmt: skip
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(prometheus, client=client, timeout=5)
        want = Observation(
            at=1.0, waiting=8, inflight=3, scheduled=1, oldest_age=40.0, completed_total=123,
            # Each queue's own figures, for service times per queue.
            queues=(QueueObservation("a", 5, 2, 100), QueueObservation("b", 3, 1, 23)),
        )  # fmt: skip
        assert await observe_until(source, ["a", "b"], want) == want
        # A pool whose queues have no counter series: None (counts), not 0.
        exposition.text = text(a=(5, 2, 1, 12.5))
        no_counter = Observation(at=1.0, waiting=5, inflight=2, scheduled=1, oldest_age=12.5)
        assert await observe_until(source, ["a"], no_counter) == no_counter
    exposition.text = text(a=(0, 0, 0, 0.0))


def test_a_counter_reset_restarts_the_rates() -> None:
    """The sources pass raw sums; the policy sees a total that went down and starts over."""
    config = PolicyConfig(max_replicas=20, concurrency=1)
    state, current = PolicyState(), 4
    # A steady 2 tasks/s with 4 in flight (2 s each): rates, not counts.
    for at in range(0, 65, 5):
        observation = Observation(at=at, waiting=0, inflight=4, completed_total=1000 + 2.0 * at)
        decision = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=at
        )
        state, current = decision.state, decision.replicas
    assert decision.demand is not None
    assert decision.demand.basis == "rates"
    assert decision.demand.arrival_rate == pytest.approx(2.0)
    # Redis lost the hash (or RabbitMQ's statistics restarted): the total falls to 4.
    reset = Observation(at=65, waiting=0, inflight=4, completed_total=4)
    decision = decide(
        config=config, state=state, observation=reset, current_replicas=current, now=65
    )
    # The old history is dropped rather than read as -1,126 completions.
    assert decision.state.observations == (reset,)
    assert decision.demand is not None
    assert decision.demand.arrival_rate is None
    assert decision.replicas >= 4  # never below the in-flight work
    # Rates come back from the new history alone.
    after = Observation(at=70, waiting=0, inflight=4, completed_total=14)
    decision = decide(
        config=config, state=decision.state, observation=after, current_replicas=decision.replicas,
        now=70,
    )  # fmt: skip
    assert decision.demand is not None
    assert decision.demand.arrival_rate == pytest.approx(2.0)


@pytest.mark.asyncio
async def test_prometheus_with_no_live_exporter_is_unavailable_not_empty(
    prometheus: str, exposition: Exposition
) -> None:
    """An exporter Prometheus can no longer scrape leaves no live series (staleness markers),
    and every queue would read as empty: a pool would scale in, or to zero, with work
    waiting. The source says the figures are missing instead, until the exporter is back.

    One read may straddle the scrape that ends the series (its queries are evaluated a few
    milliseconds apart) and see them empty beside a live exporter: one such read is allowed,
    which the scale-down window absorbs; a source that reads the gone exporter's queues as
    empty does so read after read."""
    exposition.text = text(a=(9, 1, 0, 3.0))
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(prometheus, client=client)
        want = Observation(at=1.0, waiting=9, inflight=1, scheduled=0, oldest_age=3.0)
        assert await observe_until(source, ["a"], want) == want
        try:
            exposition.text = ""  # the exporter answers nothing Prometheus can keep
            deadline = time.monotonic() + 20
            error: MetricsUnavailable | None = None
            emptied = 0
            while error is None:
                try:
                    seen = await source.observe(["a"], now=1.0)
                except MetricsUnavailable as exc:
                    error = exc
                else:
                    emptied += seen != want
                    assert emptied <= 1, "the queue read as emptied while its exporter is gone"
                    assert time.monotonic() < deadline, "the exporter's series never went stale"
                    await asyncio.sleep(0.2)
            assert "tide_exporter_up" in str(error)
            # And it stays missing while the exporter is gone.
            with pytest.raises(MetricsUnavailable, match="tide_exporter_up"):
                await source.observe(["a"], now=1.0)
        finally:
            exposition.text = text(a=(0, 0, 0, 0.0))
        # Back: the figures are read again.
        back = Observation(at=1.0, waiting=0, inflight=0, scheduled=0, oldest_age=0.0)
        assert await observe_until(source, ["a"], back) == back


@pytest.mark.asyncio
async def test_an_override_without_tides_exporter_reads_what_it_reads(
    prometheus: str, exposition: Exposition, other_exporter: Exposition
) -> None:
    """celery-exporter alone (no tide_exporter_up), read through overrides: no exporter check."""
    exposition.text = ""
    other_exporter.text = text(b=(4, 0, 0, 2.0)).split("# TYPE tide_exporter_stale")[0]
    overrides = {
        name: f'{how}(celery_queue_{series}{{queue_name=~"$queues", job="celery-exporter"}})'
        for name, how, series in (
            ("waiting", "sum", "length"),
            ("inflight", "sum", "inflight"),
            ("scheduled", "sum", "scheduled"),
            ("oldest_age", "max", "oldest_age_seconds"),
        )
    }
    try:
        async with httpx.AsyncClient() as client:
            source = PrometheusSource(
                prometheus, client=client, queries=PrometheusQueries(**overrides)
            )
            want = Observation(at=1.0, waiting=4, inflight=0, scheduled=0, oldest_age=2.0)
            assert await observe_until(source, ["b"], want) == want
    finally:
        other_exporter.text = ""
        exposition.text = text(a=(0, 0, 0, 0.0))
