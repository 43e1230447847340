"""One reconcile loop per WorkerPool, started, fed and stopped by the watch: no finalizer.

Why not kopf's daemons: a kopf daemon (or timer) always puts a finalizer on its object, so
that it can stop the daemon before the object goes, and kopf's maintainers keep it that way
(nolar/kopf#896). A finalizer makes ``kubectl delete wp`` and the deletion of a namespace
hang for as long as the operator is away (uninstalled first, crash-looping, scaled to zero),
and nothing Tide does at deletion needs one: an owned Deployment goes with its pool through
its owner reference (the garbage collector), an adopted one is never touched. So the
operator watches pools with a plain ``@kopf.on.event`` handler, which never writes to the
object, and ``PoolLoops`` runs one asyncio task per pool:

* the first event of a pool starts its loop; later events replace the body the loop reads
  at its next tick (the live spec, as kopf gave daemons);
* a ``DELETED`` event, or a ``deletionTimestamp`` (another controller's finalizer, a
  foreground deletion waiting for dependents), stops the loop after its current tick: it
  must not recreate the Deployment the garbage collector is removing;
* a pool recreated under the same name (a new uid) gets a new loop, and an event about the
  earlier incarnation arriving late is ignored;
* a watch that had to re-list after a long disconnection never reports what was deleted in
  between, so the loop itself also checks now and then that its pool still exists
  (``handlers.py``, every ``EXISTENCE_CHECK_SECONDS``, in one LIST per namespace that all
  its pools share);
* at the operator's exit every loop is told to stop and awaited, then cancelled if it
  overstays.

The loop body is the caller's (``RunFn``): this module owns only the lifecycle, so it is
small enough to be certain about.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PoolHandle", "PoolLoops", "RunFn"]

log = logging.getLogger(__name__)

Key = tuple[str, str]


class PoolHandle:
    """What a pool's loop sees: the latest body, and whether (and why) it must stop."""

    def __init__(self, key: Key, uid: str | None, body: Mapping[str, Any]) -> None:
        self.key = key
        self.uid = uid
        self.body: Mapping[str, Any] = body
        # True when the pool itself is gone (not merely the operator stopping).
        self.deleted = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, *, deleted: bool) -> None:
        self.deleted = self.deleted or deleted
        self._stop.set()

    def wake(self) -> None:
        """End the current ``sleep`` now (this replica just started acting)."""
        self._wake.set()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the loop is told to stop or woken meanwhile."""
        if self._wake.is_set():
            self._wake.clear()
            return
        waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waits:
                waiter.cancel()
        self._wake.clear()


RunFn = Callable[[PoolHandle], Awaitable[None]]


@dataclass
class _Live:
    handle: PoolHandle
    task: asyncio.Task[None]


class PoolLoops:
    """The running loops, by (namespace, name)."""

    def __init__(self, run: RunFn) -> None:
        self._run = run
        self._live: dict[Key, _Live] = {}
        # Loops told to stop and not finished yet (kept referenced until they are).
        self._ending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def body(self, key: Key) -> Mapping[str, Any] | None:
        """The latest body of a watched pool, or None when it is not watched."""
        live = self._live.get(key)
        return None if live is None else live.handle.body

    def in_namespace(self, namespace: str) -> list[tuple[Key, Mapping[str, Any]]]:
        """(key, latest body) of every watched pool of ``namespace``."""
        return [(k, live.handle.body) for k, live in self._live.items() if k[0] == namespace]

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (``None`` for the initial listing) about one pool."""
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace") or "", meta.get("name") or "")
        uid = meta.get("uid")
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        current = self._live.get(key)
        if current is not None and current.handle.uid != uid:
            if gone:
                return  # late news about an earlier pool of that name; the new one stays
            self._retire(key, deleted=True)  # recreated: the old pool is gone
            current = None
        if gone:
            if current is not None:
                self._retire(key, deleted=True)
            return
        if current is not None:
            current.handle.body = body
            return
        handle = PoolHandle(key, uid, body)
        task = asyncio.create_task(self._guarded(handle), name=f"workerpool {key[0]}/{key[1]}")
        self._live[key] = _Live(handle, task)

    def wake_all(self) -> None:
        """Wake every loop from its sleep (the replica just took the Lease)."""
        for live in self._live.values():
            live.handle.wake()

    async def stop_all(self, *, timeout: float) -> None:
        """Tell every loop to stop; wait up to ``timeout``, then cancel the rest."""
        for key in list(self._live):
            self._retire(key, deleted=False)
        tasks = set(self._ending)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _retire(self, key: Key, *, deleted: bool) -> None:
        live = self._live.pop(key)
        live.handle.stop(deleted=deleted)
        self._ending.add(live.task)
        live.task.add_done_callback(self._ending.discard)

    async def _guarded(self, handle: PoolHandle) -> None:
        try:
            await self._run(handle)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop catches its own; this is the last line of defence
            log.exception("the loop of %s/%s ended with an error", *handle.key)
        finally:
            # A loop that ended on its own (its pool found gone) stops being tracked.
            live = self._live.get(handle.key)
            if live is not None and live.handle is handle:
                del self._live[handle.key]
