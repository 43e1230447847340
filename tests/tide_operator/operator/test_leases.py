"""The Lease state machine (``adapters/leases.py``) step by step, on a clock the test turns.

Two electors share the emulator's Lease, which serves Leases as kube-apiserver does (409 on
a stale resourceVersion or an existing name, 404, 400/422 on bad bodies); each elector's
clock is a number the test moves, so expiry, renewal windows and skew are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from kube_emulator import TideEmulator
from pool_harness import NS

from tide_operator.adapters.credentials import Credentials
from tide_operator.adapters.kube import ApiError, Conflict, KubeApi, NotFound
from tide_operator.adapters.leases import LeaseElector, LeaseSettings, micro_time

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime(False)]

PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """An elector with its own clock, wall clock and record of what it was told."""

    def __init__(self, api: KubeApi, identity: str, *, skew: timedelta = timedelta()) -> None:
        self.clock = Clock()
        self.changes: list[bool] = []

        async def client() -> KubeApi:
            return api

        self.elector = LeaseElector(
            LeaseSettings(namespace=NS, identity=identity),
            client,
            clock=self.clock,
            wall=lambda: datetime.now(UTC) + skew,
            on_change=self.changes.append,
        )

    async def step(self, *, after: float = 0.0) -> bool:
        self.clock.now += after
        await self.elector.step()
        return self.elector.holding


@pytest_asyncio.fixture()
async def client(emulator: TideEmulator) -> AsyncIterator[KubeApi]:
    api = KubeApi(Credentials(str(emulator.url)))
    yield api
    await api.aclose()


def holder(emulator: TideEmulator) -> str | None:
    lease = emulator.lease(NS)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_the_first_creates_the_second_stands_by(
    emulator: TideEmulator, client: KubeApi
) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    assert await a.step()
    assert holder(emulator) == "a"
    assert not await b.step()
    assert b.elector.holder == "a"
    assert a.changes == [True]
    assert b.changes == []
    # Only reads from the standby.
    assert [w[2] for w in emulator.lease_writes] == ["a"]


async def test_expiry_is_judged_on_the_standbys_own_clock(
    emulator: TideEmulator, client: KubeApi
) -> None:
    # The holder's wall clock is an hour behind: its renewTime looks long expired, which
    # must not matter; only the standby's own clock since it saw the record change does.
    a = Replica(client, "a", skew=timedelta(hours=-1))
    b = Replica(client, "b")
    assert await a.step()
    assert not await b.step()
    assert not await b.step(after=7.9)
    assert holder(emulator) == "a"
    assert await b.step(after=0.1)  # 8 s without a change: expired, taken over
    assert holder(emulator) == "b"
    lease = emulator.lease(NS)
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] == 1
    # The old holder's renewal carries the resourceVersion it wrote: 409, it stands down.
    assert not await a.step(after=1)
    assert a.changes == [True, False]
    assert holder(emulator) == "b"


async def test_renewals_keep_the_lease_and_a_silent_holder_stops_acting(
    emulator: TideEmulator, client: KubeApi
) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    assert await a.step()
    assert not await b.step()
    for _ in range(10):  # 20 s of renewals every 2 s: the standby never takes over
        assert await a.step(after=2)
        assert not await b.step(after=2)
    assert holder(emulator) == "a"
    # No renewal for 6 s (duration 8 - renewal 2): the holder stops acting on its own,
    # before any standby can judge the Lease expired (8 s after it last saw it change).
    a.clock.now += 5.9
    assert a.elector.holding
    a.clock.now += 0.1
    assert not a.elector.holding
    assert not await b.step(after=6)  # b saw the last renewal 2 s before a's: 8 s not over
    assert await b.step(after=2)


async def test_a_released_lease_is_taken_at_the_next_read(
    emulator: TideEmulator, client: KubeApi
) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    assert await a.step()
    assert not await b.step()
    await a.elector.release()
    assert not a.elector.holding
    assert holder(emulator) == ""
    assert await b.step(after=0.5)
    assert holder(emulator) == "b"


async def test_a_restarted_replica_takes_its_own_lease_back_at_once(
    emulator: TideEmulator, client: KubeApi
) -> None:
    assert await Replica(client, "a").step()
    again = Replica(client, "a")  # the same pod name, a new process
    assert await again.step()
    assert again.elector.acquisitions == 1


async def test_two_creators_race_and_one_wins(emulator: TideEmulator, client: KubeApi) -> None:
    a, b = Replica(client, "a"), Replica(client, "b")
    original_get = client.get
    raced = False

    async def get_then_lose_the_race(path: str, **kwargs: object) -> object:
        # b reads "absent", then a creates it before b's create arrives.
        nonlocal raced
        try:
            return await original_get(path, **kwargs)
        except NotFound:
            if not raced:
                raced = True
                assert await a.step()
            raise

    client.get = get_then_lose_the_race
    assert not await b.step()  # 404, then its POST: 409 AlreadyExists
    client.get = original_get
    assert holder(emulator) == "a"
    assert not await b.step()
    assert b.elector.holder == "a"


async def test_the_emulator_serves_leases_as_the_api_server_does(
    emulator: TideEmulator, client: KubeApi
) -> None:
    now = micro_time(datetime.now(UTC))
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "x"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 8, "renewTime": now},
    }
    created = await client.create(PATH, body)
    assert created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict) as exists:
        await client.create(PATH, body)
    assert exists.value.reason == "AlreadyExists"
    stale = {**body, "metadata": {"name": "x", "resourceVersion": "1"}}
    fresh = {**body, "metadata": {**created["metadata"]}}
    assert (await client.replace(f"{PATH}/x", fresh))["spec"]["holderIdentity"] == "a"
    with pytest.raises(Conflict) as modified:
        await client.replace(f"{PATH}/x", stale)
    assert modified.value.reason == "Conflict"
    with pytest.raises(NotFound):
        await client.get(f"{PATH}/y")
    # A Lease allows create-on-update: a PUT to an absent one creates it, even with a
    # resourceVersion (kube-apiserver v1.26 answers 201 to both; seen on a real server).
    made = await client.replace(f"{PATH}/y", {**body, "metadata": {"name": "y"}})
    assert made["spec"]["holderIdentity"] == "a"
    assert emulator.lease("default", "y") == made
    remade = {**body, "metadata": {"name": "u", "resourceVersion": "123"}}
    assert (await client.replace(f"{PATH}/u", remade))["metadata"]["resourceVersion"] != "123"
    # Replacing one that exists without saying which version was read is refused.
    with pytest.raises(ApiError) as unversioned:
        await client.replace(f"{PATH}/x", body)
    assert (unversioned.value.status, unversioned.value.reason) == (422, "Invalid")
    assert "metadata.resourceVersion" in str(unversioned.value)
    with pytest.raises(ApiError) as invalid:
        await client.create(
            PATH, {**body, "metadata": {"name": "z"}, "spec": {"leaseDurationSeconds": 0}}
        )
    assert (invalid.value.status, invalid.value.reason) == (422, "Invalid")
    with pytest.raises(ApiError) as mismatch:
        await client.replace(f"{PATH}/x", {**body, "metadata": {"name": "other"}})
    assert mismatch.value.status == 400
    # A field of the wrong type is a decoding error: 400, and a breach of the contract.
    with pytest.raises(ApiError) as typed:
        await client.create(
            PATH, {**body, "metadata": {"name": "w"}, "spec": {"leaseDurationSeconds": "8"}}
        )
    assert typed.value.status == 400
    with pytest.raises(ApiError) as timed:
        await client.create(PATH, {**body, "metadata": {"name": "v"}, "spec": {"renewTime": "now"}})
    assert timed.value.status == 400
    assert len(emulator.violations) == 2
    emulator.violations.clear()  # expected here; any other fails the emulator fixture
