"""SharedScrapes: pools reading one exporter within ``max_age`` share one scrape.

``looptime`` fakes the event loop's clock, so ``asyncio.sleep`` here moves time forward
instantly (it is the clock the class reads), never waits for another task.
"""

from __future__ import annotations

import asyncio

import pytest

from tide_operator.adapters.sources import MetricsUnavailable, SharedScrapes

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(30)]

URL = "http://exporter:9808/metrics"


class Exporter:
    """A scrape that counts its calls and answers after ``delay`` seconds of loop time."""

    def __init__(self, *, delay: float = 0.1, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail

    async def __call__(self) -> object:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(self.delay)
        if self.fail:
            raise MetricsUnavailable(f"exporter unreachable (call {call})")
        return {"call": call}


async def test_concurrent_readers_share_one_scrape_in_flight() -> None:
    shared, exporter = SharedScrapes(max_age=0.5), Exporter()
    results = await asyncio.gather(*(shared.get(URL, scrape=exporter) for _ in range(100)))
    assert exporter.calls == 1
    assert all(result == {"call": 1} for result in results)


async def test_a_scrape_older_than_max_age_is_not_reused() -> None:
    shared, exporter = SharedScrapes(max_age=0.5), Exporter()
    assert await shared.get(URL, scrape=exporter) == {"call": 1}
    await asyncio.sleep(0.3)  # 0.4 s after the first scrape began: still shared
    assert await shared.get(URL, scrape=exporter) == {"call": 1}
    await asyncio.sleep(0.2)  # 0.6 s: too old
    assert await shared.get(URL, scrape=exporter) == {"call": 2}
    assert exporter.calls == 2


async def test_each_url_has_its_own_scrape() -> None:
    shared, exporter = SharedScrapes(), Exporter()
    await asyncio.gather(
        shared.get(URL, scrape=exporter), shared.get("http://other/metrics", scrape=exporter)
    )
    assert exporter.calls == 2


async def test_a_failure_is_shared_then_retried() -> None:
    shared, exporter = SharedScrapes(max_age=0.5), Exporter(fail=True)
    outcomes = await asyncio.gather(
        *(shared.get(URL, scrape=exporter) for _ in range(3)), return_exceptions=True
    )
    assert [str(o) for o in outcomes] == ["exporter unreachable (call 1)"] * 3
    await asyncio.sleep(1)
    exporter.fail = False
    assert await shared.get(URL, scrape=exporter) == {"call": 2}


async def test_one_reader_cancelled_does_not_cancel_the_others() -> None:
    shared, exporter = SharedScrapes(), Exporter(delay=1.0)
    first = asyncio.create_task(shared.get(URL, scrape=exporter))
    second = asyncio.create_task(shared.get(URL, scrape=exporter))
    await asyncio.sleep(0.1)
    first.cancel()
    assert await second == {"call": 1}
    assert first.cancelled()
    assert exporter.calls == 1
