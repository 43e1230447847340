"""Which operator replica acts: a ``coordination.k8s.io/v1`` Lease, as client-go elects leaders.

The chart runs two operator replicas; exactly one of them (the Lease's holder) scales,
writes statuses and posts Events. The Lease is ``tide-operator`` in the operator's own
namespace; ``holderIdentity`` is the replica's identity (``POD_ID``, the pod's name).

How it goes, with the defaults (``leaseDurationSeconds`` 8, a renewal every 2 s):

* **absent**: create it (POST) naming this replica; a 409 means another replica created it
  first, and this one stands by;
* **held by this replica**: renew it every ``renew_every`` seconds (PUT with the
  resourceVersion last read, so a renewal that raced a takeover fails with 409 and this
  replica stands down at once);
* **held by another**: re-read it every ``renew_every`` seconds. Expiry is judged the way
  client-go judges it, on this replica's own monotonic clock and not the holder's
  ``renewTime``: the Lease is expired when its record has not changed for
  ``leaseDurationSeconds`` since this replica first saw that record. Clocks of two nodes may
  disagree by seconds; the time between two reads of one process cannot. Then it takes
  the Lease over (PUT with the resourceVersion it read; a 409 means another standby won);
* **released** (``holderIdentity`` empty): taken at once. A replica stopping cleanly
  (SIGTERM: a rolling update, a drain) releases the Lease, so the handover is one renewal
  period instead of a lease duration.

A holder *acts* only while its last successful renewal is younger than
``leaseDurationSeconds - renew_every`` (6 s), measured from when that renewal was sent:
a holder cut off from the API server stops acting before any standby can consider the
Lease expired (8 s after it last saw it change), so two replicas never act at once as long
as their clocks run at roughly the same rate.

The state machine is ``LeaseElector.step`` (one read or write); ``run`` repeats it. Both use
the clock given (``loop.time`` by default, which the tests' fake clock drives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tide_operator.adapters.kube import ApiError, Conflict, KubeApi, NotFound, Unreachable

__all__ = [
    "LEASE_DURATION",
    "LEASE_NAME",
    "LEASE_RENEW",
    "LeaseElector",
    "LeaseSettings",
    "micro_time",
]

log = logging.getLogger(__name__)

LEASE_NAME: Final = "tide-operator"
LEASE_DURATION: Final = 8
LEASE_RENEW: Final = 2.0
GROUP_VERSION: Final = "coordination.k8s.io/v1"


def micro_time(when: datetime) -> str:
    """A ``metav1.MicroTime`` as the API server writes it: RFC 3339, microseconds, UTC."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseSettings:
    """Where the Lease is and who this replica is."""

    namespace: str
    identity: str
    name: str = LEASE_NAME
    duration: int = LEASE_DURATION
    renew_every: float = LEASE_RENEW

    def __post_init__(self) -> None:
        if self.duration < 1:
            raise ValueError("the lease duration must be at least 1 second")
        if not 0 < self.renew_every < self.duration:
            raise ValueError(
                f"renew the lease more often than it lasts (every {self.renew_every:g}s "
                f"for a {self.duration}s lease)"
            )
        if not self.identity:
            raise ValueError("the replica's identity (POD_ID) is empty")

    @property
    def path(self) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/leases/{self.name}"

    @property
    def collection(self) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{self.namespace}/leases"

    @property
    def acting_window(self) -> float:
        """How long after a successful renewal was sent the holder may still act."""
        return self.duration - self.renew_every


class LeaseElector:
    """One replica's view of the Lease, and its attempts to hold it."""

    def __init__(
        self,
        settings: LeaseSettings,
        api: Callable[[], Awaitable[KubeApi]],
        *,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self._api = api
        self._clock = clock
        self._wall = wall
        self._on_change = on_change
        # The Lease as last read or written (None: read it first), and when, on our clock,
        # its record (resourceVersion) was first seen.
        self.record: Mapping[str, Any] | None = None
        self._observed_at: float | None = None
        # When the last successful create/renewal of ours was sent (None: not holding).
        self._held_since_send: float | None = None
        self.acquisitions = 0
        self._published = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ what it knows

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def identity(self) -> str:
        return self.settings.identity

    @property
    def holding(self) -> bool:
        """Whether this replica holds the Lease and renewed it recently enough to act."""
        sent = self._held_since_send
        if sent is None:
            return False
        # A clock that went backwards (a test's fake clock starting) proves nothing: the
        # renewal counts as too old, and the next one puts it right.
        return sent <= self.now() < sent + self.settings.acting_window

    @property
    def holder(self) -> str | None:
        """Who the Lease names, as last read."""
        if self.record is None:
            return None
        return (self.record.get("spec") or {}).get("holderIdentity") or None

    def expired(self, now: float) -> bool:
        """Whether the record seen has not changed for its own leaseDurationSeconds."""
        if self.record is None or self._observed_at is None:
            return False
        spec = self.record.get("spec") or {}
        duration = spec.get("leaseDurationSeconds") or self.settings.duration
        return now >= self._observed_at + float(duration)

    def _observe(self, record: Mapping[str, Any], now: float) -> None:
        before = (self.record or {}).get("metadata", {}).get("resourceVersion")
        after = record.get("metadata", {}).get("resourceVersion")
        if self.record is None or before != after:
            self._observed_at = now
        self.record = record

    def _publish(self) -> None:
        acting = self.holding
        if acting != self._published:
            self._published = acting
            if self._on_change is not None:
                self._on_change(acting)

    # ------------------------------------------------------------------ one step

    def _body(self, *, acquire: bool, now_wall: datetime, release: bool = False) -> dict[str, Any]:
        before = self.record or {}
        spec_before = before.get("spec") or {}
        transitions = int(spec_before.get("leaseTransitions") or 0)
        stamp = micro_time(now_wall)
        spec: dict[str, Any] = {
            "holderIdentity": "" if release else self.identity,
            "leaseDurationSeconds": 1 if release else self.settings.duration,
            "renewTime": stamp,
            "leaseTransitions": transitions,
            "acquireTime": spec_before.get("acquireTime") or stamp,
        }
        if acquire:
            spec["acquireTime"] = stamp
            if spec_before.get("holderIdentity"):
                spec["leaseTransitions"] = transitions + 1
        metadata: dict[str, Any] = {
            "name": self.settings.name,
            "namespace": self.settings.namespace,
        }
        version = before.get("metadata", {}).get("resourceVersion")
        if version:
            metadata["resourceVersion"] = version
        for key in ("labels", "annotations"):
            if before.get("metadata", {}).get(key):
                metadata[key] = before["metadata"][key]
        return {"apiVersion": GROUP_VERSION, "kind": "Lease", "metadata": metadata, "spec": spec}

    async def step(self) -> None:
        """One attempt: read, create, renew or take over, as the Lease's state says."""
        api = await self._api()
        settings = self.settings
        sent = self.now()
        try:
            if self.record is None or self._held_since_send is None:
                # Standing by (or starting): read what is there now.
                try:
                    self._observe(await api.get(settings.path), sent)
                except NotFound:
                    self.record = None
                    created = await api.create(
                        settings.collection, self._body(acquire=True, now_wall=self._wall())
                    )
                    self._acquired(created, sent)
                    return
            holder = self.holder
            if holder == self.identity:
                # Ours: renew (a restarted replica of the same name takes its own back).
                renewed = await api.replace(
                    settings.path, self._body(acquire=False, now_wall=self._wall())
                )
                if self._held_since_send is None:
                    self._acquired(renewed, sent)
                else:
                    self._observe(renewed, sent)
                    self._held_since_send = sent
            elif holder is None or self.expired(sent):
                taken = await api.replace(
                    settings.path, self._body(acquire=True, now_wall=self._wall())
                )
                log.info(
                    "took over the lease %s/%s from %s",
                    settings.namespace,
                    settings.name,
                    holder or "nobody (released)",
                )
                self._acquired(taken, sent)
        except Conflict:
            # Someone else wrote it since we read it (a standby took over, or won the race
            # to create it): stand by and read it again next time.
            self._stand_by(reread=True)
        except NotFound:
            self._stand_by(reread=True)  # deleted under us: create it next time
        finally:
            self._publish()

    def _acquired(self, record: Mapping[str, Any], sent: float) -> None:
        self._observe(record, sent)
        self._held_since_send = sent
        self.acquisitions += 1
        log.info(
            "%s holds the lease %s/%s: this replica acts",
            self.identity,
            self.settings.namespace,
            self.settings.name,
        )

    def _stand_by(self, *, reread: bool) -> None:
        if self._held_since_send is not None:
            log.warning(
                "%s lost the lease %s/%s: standing by",
                self.identity,
                self.settings.namespace,
                self.settings.name,
            )
        self._held_since_send = None
        if reread:
            self.record = None

    def next_step_in(self) -> float:
        """Seconds until the next step: a renewal period, or sooner if the Lease expires."""
        wait = self.settings.renew_every
        if self._held_since_send is None and self.record is not None and self.holder:
            spec = self.record.get("spec") or {}
            duration = float(spec.get("leaseDurationSeconds") or self.settings.duration)
            assert self._observed_at is not None
            wait = min(wait, max(0.0, self._observed_at + duration - self.now()))
        return wait

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Step every renewal period until ``stop``; never raises (logs and retries)."""
        failing = False
        while not self._stopped.is_set():
            try:
                # A request stuck past the acting window must not keep us acting.
                async with asyncio.timeout(self.settings.acting_window):
                    await self.step()
                if failing:
                    log.info("the lease %s answers again", self.settings.path)
                failing = False
            except (ApiError, Unreachable, TimeoutError) as exc:
                if not failing:
                    log.warning("the lease %s: %s; retrying", self.settings.path, exc)
                failing = True
                if not self.holding:
                    self._stand_by(reread=True)
                self._publish()
            except Exception:
                log.exception("the lease %s: unexpected error; retrying", self.settings.path)
                self._publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=self.next_step_in())
            self._publish()

    def stop(self) -> None:
        self._stopped.set()

    async def release(self) -> None:
        """Give the Lease up (a clean shutdown), so a standby takes it at its next read."""
        if self._held_since_send is None or self.record is None:
            return
        self._held_since_send = None
        self._publish()
        api = await self._api()
        try:
            async with asyncio.timeout(self.settings.acting_window):
                await api.replace(
                    self.settings.path,
                    self._body(acquire=False, now_wall=self._wall(), release=True),
                )
            log.info("%s released the lease %s", self.identity, self.settings.path)
        except (ApiError, Unreachable, TimeoutError) as exc:
            # It expires by itself: the standby takes over a lease duration later.
            log.warning("could not release the lease %s: %s", self.settings.path, exc)
