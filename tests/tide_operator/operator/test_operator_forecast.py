"""The arrivals forecast survives an operator restart: its seasonal profile is written to
``status.forecast`` (by UTC time of day, validated by the emulator against the CRD's status
schema) and a restarted operator starts from it instead of from nothing."""

from __future__ import annotations

from typing import Any

import pytest
from kube_emulator import WORKERPOOLS, TideEmulator
from pool_harness import (
    NS,
    FakeBusyProbe,
    FakeExporter,
    eventually,
    obj,
    pool_body,
    running_operator,
)

from tide_operator.adapters.kube import KubeApi

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]


def profile(emulator: TideEmulator) -> list[float]:
    found = obj(emulator, WORKERPOOLS, "seasonal") or {}
    forecast: dict[str, Any] = (found.get("status") or {}).get("forecast") or {}
    return list(forecast.get("arrivalsPerSecond") or [])


def seen(emulator: TideEmulator) -> list[float]:
    return [v for v in profile(emulator) if v >= 0]


async def test_the_seasonal_profile_is_restored_after_a_restart(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=0, inflight=2)
    exporter.complete("default", per_scrape=2)
    await api.create(
        f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools",
        # A one-hour season: buckets of 12.5 s.
        pool_body("seasonal", exporter_url=exporter.url, pollingInterval=1,
                  forecast={"seasonSeconds": 3600}),
    )  # fmt: skip
    async with running_operator(emulator, probe, scope="namespace", nodeid=request.node.nodeid):
        await eventually(lambda: len(seen(emulator)) >= 3, timeout=120, what="three buckets")
    before = seen(emulator)
    assert len(profile(emulator)) == 288
    assert all(v > 0 for v in before)

    # Another operator (an upgrade): arrivals now at another rate, so what it learns itself
    # differs from what the first one stored.
    exporter.complete("default", per_scrape=10)
    async with running_operator(emulator, probe, scope="namespace", nodeid=request.node.nodeid):
        await eventually(
            lambda: len(seen(emulator)) >= len(before) + 2, timeout=120, what="new buckets"
        )
    after = seen(emulator)
    # The stored buckets are still there beside the new ones: the profile was restored, not
    # learnt again from nothing (which would hold only the new rate's buckets).
    for value in before:
        assert value in after
    assert max(after) > max(before)
