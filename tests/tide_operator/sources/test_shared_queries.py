"""Pools reading the same Prometheus share one query per series (a real Prometheus).

Each test sets an exposition, waits until Prometheus has scraped it, then lets many pools
read at once and compares what each got with what it gets alone, and counts the queries
Prometheus itself says it served (``prometheus_http_requests_total`` of its query API).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import Exposition
from test_metric_sources import observe_until, text

from tide_operator.adapters.sources import PrometheusSource, SharedQueries
from tide_operator.core.policy import Observation
from tide_operator.resources.spec import PrometheusQueries

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio]

# Five figures, the stale flag and the exporter's newest sample: one pool's read.
SERIES_PER_READ = 7
# Of those, the queries that name no queue: one answer serves every pool.
QUEUELESS = 2


async def served(client: httpx.AsyncClient, prometheus: str) -> float:
    """Queries Prometheus's query API has answered so far, by its own count (its /metrics)."""
    response = await client.get(f"{prometheus}/metrics")
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "prometheus_http_requests_total"
                and sample.labels.get("handler") == "/api/v1/query"
            ):
                total += sample.value
    return total


async def test_many_pools_share_one_query_per_series(
    prometheus: str, exposition: Exposition
) -> None:
    queues = {f"q{i}": (i % 7, i % 3, 0, float(i)) for i in range(300)}
    exposition.text = text(**queues)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
        alone = PrometheusSource(prometheus, client=client)
        # Ready once Prometheus has the last queue.
        last = Observation(at=1.0, waiting=299 % 7, inflight=299 % 3, scheduled=0, oldest_age=299.0)
        assert await observe_until(alone, ["q299"], last) == last
        pools = [[f"q{i}"] for i in range(300)] + [["q1", "q2", "absent"]]
        expected = [
            Observation(at=1.0, waiting=i % 7, inflight=i % 3, scheduled=0, oldest_age=float(i))
            for i in range(300)
        ] + [Observation(at=1.0, waiting=3, inflight=3, scheduled=0, oldest_age=2.0)]
        assert await alone.observe(["q1", "q2", "absent"], now=1.0) == expected[-1]

        shared = SharedQueries()
        sources = [PrometheusSource(prometheus, client=client, shared=shared) for _ in pools]
        before = await served(client, prometheus)
        seen = await asyncio.gather(
            *(s.observe(p, now=1.0) for s, p in zip(sources, pools, strict=True))
        )
        after = await served(client, prometheus)
    assert seen == expected
    assert shared.sent == {prometheus: SERIES_PER_READ}
    assert after - before == SERIES_PER_READ


async def test_a_late_reader_joins_the_queues_in_play(
    prometheus: str, exposition: Exposition
) -> None:
    exposition.text = text(a=(1, 0, 0, 1.0), b=(2, 0, 0, 2.0), c=(4, 0, 0, 4.0))
    async with httpx.AsyncClient() as client:
        want = Observation(at=1.0, waiting=4, inflight=0, scheduled=0, oldest_age=4.0)
        assert await observe_until(PrometheusSource(prometheus, client=client), ["c"], want)
        # An answer is reused for as long as max_age (long here: a busy machine is slow).
        shared = SharedQueries(max_age=60)
        source = PrometheusSource(prometheus, client=client, shared=shared)
        await source.observe(["a"], now=1.0)
        # A queue the shared query did not cover: a query of its own, over both.
        b = await source.observe(["b"], now=1.0)
        assert b.waiting == 2
        assert shared.sent == {prometheus: 2 * SERIES_PER_READ - QUEUELESS}
        # Both are in play now: that query answers either, and both at once.
        a, b = await asyncio.gather(source.observe(["a"], now=2.0), source.observe(["b"], now=2.0))
        both = await source.observe(["a", "b"], now=2.0)
        assert (a.waiting, b.waiting, both.waiting) == (1, 2, 3)
        assert shared.sent == {prometheus: 2 * SERIES_PER_READ - QUEUELESS}


async def test_an_override_is_never_summed_over_other_pools_queues(
    prometheus: str, exposition: Exposition
) -> None:
    exposition.text = text(a=(5, 0, 0, 1.0), b=(7, 0, 0, 1.0))
    overrides = PrometheusQueries(waiting='sum(celery_queue_length{queue_name=~"$queues"})')
    async with httpx.AsyncClient() as client:
        want = Observation(at=1.0, waiting=7, inflight=0, scheduled=0, oldest_age=1.0)
        assert await observe_until(PrometheusSource(prometheus, client=client), ["b"], want)
        shared = SharedQueries()
        one, two = (
            PrometheusSource(prometheus, client=client, shared=shared, queries=overrides)
            for _ in range(2)
        )
        a, b = await asyncio.gather(one.observe(["a"], now=1.0), two.observe(["b"], now=1.0))
    assert (a.waiting, b.waiting) == (5, 7)
    # The override is sent per pool; the six other series are shared.
    assert shared.sent == {prometheus: SERIES_PER_READ - 1}


async def test_a_thousand_queues_in_one_query(prometheus: str, exposition: Exposition) -> None:
    """The union of every queue in play is too long for a URL: it goes as a POST form."""
    names = [f"orders.region-{i:04d}" for i in range(1000)]
    exposition.text = text(**dict.fromkeys(names, (1, 0, 0, 1.0)))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
        alone = PrometheusSource(prometheus, client=client)
        want = Observation(at=1.0, waiting=1, inflight=0, scheduled=0, oldest_age=1.0)
        assert await observe_until(alone, [names[-1]], want) == want
        shared = SharedQueries()
        sources = [PrometheusSource(prometheus, client=client, shared=shared) for _ in names]
        started = time.monotonic()
        seen = await asyncio.gather(
            *(s.observe([n], now=1.0) for s, n in zip(sources, names, strict=True))
        )
        elapsed = time.monotonic() - started
    assert all(o.waiting == 1 for o in seen)
    assert shared.sent == {prometheus: SERIES_PER_READ}
    print(f"\n1,000 pools read one Prometheus in {elapsed:.2f} s with {SERIES_PER_READ} queries")
