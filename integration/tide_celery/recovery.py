"""Dead-worker recovery on Redis: put back, at once, the messages a dead worker held.

Why: kombu's Redis transport emulates acknowledgements. A delivered message moves to the
``unacked`` hash (tag -> ``[message, exchange, routing_key]``) and ``unacked_index``
(tag -> delivery time) until the worker acknowledges it; a worker that dies without a
word (SIGKILL, OOM kill, evicted pod, lost node) never does, and kombu puts the message
back only once it is older than the visibility timeout (two hours with Tide's defaults).
The entries do not say which worker holds them, so the integration's workers record it
(``tide_celery.holdings``): ``_tide.held.<node>`` maps each delivery tag the worker
received to ``[incarnation, task id]``, and each run of the worker (an *incarnation*)
keeps a lease ``_tide.lease.<node>.<incarnation>`` alive with a short TTL.

``recover_node(channel, node)`` is called by whoever sees the worker die (Tide's operator
when its pod is deleted or failed, local mode when the process exits, the worker's next
incarnation after a container restart). For every delivery the node's record names:

* if the incarnation that received it still holds a live lease, nothing is touched: the
  worker is slow, partitioned from the API server, or was reported dead by mistake, and
  it may still acknowledge (the *fencing*: a report of death alone never moves a message);
* else, if the tag is still in ``unacked``, the message goes back to the head of its queue
  by kombu's own path, in one MULTI/EXEC watched on ``unacked`` as kombu's
  ``QoS.restore_by_tag`` does: ``_remove_from_indices`` and ``_do_restore_message`` (which
  marks it ``redelivered`` and pushes it on the priority list of every queue bound to its
  exchange and routing key), plus, in the same transaction, the record's entry removed,
  ``_tide.recovered`` counted per queue and a notice ``[task id, node, queue, time]``
  pushed on ``_tide.redelivered``, from which the app's workers learn that the task waits
  to run again (Tide's jobs turn from ``started`` to ``retrying``;
  ``tide_celery.redeliveries``);
* else the message was acknowledged meanwhile (or restored by kombu's own visibility
  sweep): only the record's entry is dropped.

What if the "dead" worker comes back (a frozen process resumed, a partition healed)? Its
acknowledgement of a restored tag removes nothing (the tag is gone from ``unacked``; a
redelivery gets a new tag), so the queue state stays exact; the task may then run twice,
once on the old worker and once on the one that received it again. That is Celery's
at-least-once contract for late acknowledgement and for prefetched messages, the same as
a visibility-timeout redelivery, only seconds rather than hours after the death (see
``docs/recovery.md``).

A message whose exchange has no binding left would be dropped by kombu's
``_do_restore_message`` (it logs and pushes nothing); here the transaction is abandoned
instead and the message stays unacknowledged for kombu's visibility sweep.

On other transports nothing is done: RabbitMQ requeues a consumer's unacknowledged
messages itself when its connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tide_celery.layout import (
    LEASE_TTL,
    RECOVERED_KEY,
    REDELIVERED_KEY,
    REDELIVERED_MAX,
    REDELIVERED_TTL,
    held_key,
    lease_key,
)

log = logging.getLogger(__name__)

#: How long a caller waits for a live lease of a worker reported dead to lapse before it
#: concludes the worker lives (its holdings are left to it, and to the visibility timeout).
GIVE_UP_AFTER = 120.0


@dataclass(frozen=True)
class Recovered:
    """What one recovery of one node did."""

    node: str
    #: queue -> messages put back.
    restored: Mapping[str, int] = field(default_factory=dict)
    #: Task ids of the messages put back (for job records: "redelivered").
    task_ids: tuple[str, ...] = ()
    #: Record entries of messages already acknowledged, dropped.
    settled: int = 0
    #: Deliveries left alone because their incarnation's lease is live.
    leased: int = 0
    #: Seconds until the last live lease lapses unless renewed (0 when none is live).
    lease_remaining: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.restored.values())

    @property
    def complete(self) -> bool:
        """Nothing of the node's record is left behind a live lease."""
        return self.leased == 0

    def merged(self, later: Recovered) -> Recovered:
        """This recovery followed by ``later`` (a retry after a lease lapsed)."""
        restored = Counter(self.restored)
        restored.update(later.restored)
        return Recovered(
            node=self.node,
            restored=dict(restored),
            task_ids=self.task_ids + later.task_ids,
            settled=self.settled + later.settled,
            leased=later.leased,
            lease_remaining=later.lease_remaining,
        )

    def describe(self) -> str:
        if not self.restored:
            return f"no message of {self.node} was left unacknowledged"
        per_queue = ", ".join(f"{q} {n}" for q, n in sorted(self.restored.items()))
        return f"{self.total} message(s) of {self.node} back in their queues ({per_queue})"


class _Abandon(Exception):
    """The transaction must not run (nothing would be pushed back)."""


def _command(pipe: Any, command: str, key: str, *args: Any, prefix: str) -> None:
    """Queue ``command`` on kombu's pipeline with the key prefixed exactly once.

    kombu's prefixing pipeline adds ``global_keyprefix`` to the commands it knows
    (``PREFIXED_SIMPLE_COMMANDS``); for any other command the prefix is added here, so the
    result is right whichever commands a kombu version lists.
    """
    known = getattr(type(pipe), "PREFIXED_SIMPLE_COMMANDS", ())
    full = key if command in known else prefix + key
    pipe.execute_command(command, full, *args)


def _plain(channel: Any) -> Any:
    """A plain Redis client on the channel's pool (keys prefixed by the caller)."""
    import redis

    return redis.Redis(connection_pool=channel.pool)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _holding(raw: Any) -> tuple[str, str]:
    """(incarnation, task id) of one record entry; unreadable entries belong to nobody."""
    try:
        incarnation, task_id = json.loads(_decode(raw))
        return str(incarnation), str(task_id)
    except (ValueError, TypeError):
        return "", ""


def recover_node(channel: Any, node: str) -> Recovered:
    """Put back what ``node`` held, except deliveries of a live lease (see the module)."""
    prefix = str(getattr(channel, "global_keyprefix", "") or "")
    plain = _plain(channel)
    record = held_key(node)
    holdings = {_decode(tag): _holding(raw) for tag, raw in plain.hgetall(prefix + record).items()}
    if not holdings:
        return Recovered(node=node)

    incarnations = sorted({incarnation for incarnation, _ in holdings.values()})
    pipe = plain.pipeline(transaction=False)
    for incarnation in incarnations:
        pipe.pttl(prefix + lease_key(node, incarnation))
    # PTTL: -2 no key (lapsed or released), -1 no expiry (live, never lapses by itself).
    ttls = dict(zip(incarnations, (int(ttl) for ttl in pipe.execute()), strict=True))
    live = {incarnation: ttl for incarnation, ttl in ttls.items() if ttl != -2}

    restored: Counter[str] = Counter()
    task_ids: list[str] = []
    settled = leased = 0
    qos = channel.qos
    for tag, (incarnation, task_id) in holdings.items():
        if incarnation in live:
            leased += 1
            continue
        queues = _restore(
            channel, qos, tag=tag, record=record, prefix=prefix, task_id=task_id, node=node
        )
        if queues is None:
            continue  # left for kombu's visibility sweep (logged)
        if not queues:
            settled += 1
            continue
        restored.update(queues)
        task_ids.append(task_id)
    remaining = max((ttl for ttl in live.values() if ttl > 0), default=0) / 1000.0
    result = Recovered(
        node=node,
        restored=dict(restored),
        task_ids=tuple(task_ids),
        settled=settled,
        leased=leased,
        lease_remaining=remaining,
    )
    if result.restored:
        log.warning("recovered %s", result.describe())
    return result


def requeue_dropped(channel: Any, node: str, incarnation: str, *, keep: set[str]) -> Recovered:
    """Put back what this run of ``node`` received and dropped without acknowledging.

    Called by the worker itself after it reconnects to Redis (``tide_celery.reconnect``):
    Celery forgets the prefetched and ETA-held messages of a lost connection ("they can't
    be acked anyway") and counts on the broker to deliver them again, which RabbitMQ does
    and Redis does only after the visibility timeout when the broker itself went away (kombu's
    restore at channel close failed). ``keep``: ids of tasks the worker still holds (running
    under late acks, to be acknowledged on the new connection); they stay. No lease is
    consulted: the caller is the holder.
    """
    prefix = str(getattr(channel, "global_keyprefix", "") or "")
    plain = _plain(channel)
    record = held_key(node)
    holdings = {_decode(tag): _holding(raw) for tag, raw in plain.hgetall(prefix + record).items()}
    restored: Counter[str] = Counter()
    task_ids: list[str] = []
    settled = 0
    for tag, (owner, task_id) in holdings.items():
        if owner != incarnation or task_id in keep:
            continue
        queues = _restore(
            channel, channel.qos, tag=tag, record=record, prefix=prefix, task_id=task_id, node=node
        )
        if queues is None:
            continue
        if not queues:
            settled += 1
            continue
        restored.update(queues)
        task_ids.append(task_id)
    result = Recovered(
        node=node, restored=dict(restored), task_ids=tuple(task_ids), settled=settled
    )
    if result.restored:
        log.warning("requeued after reconnecting: %s", result.describe())
    return result


def _restore(
    channel: Any, qos: Any, *, tag: str, record: str, prefix: str, task_id: str, node: str
) -> list[str] | None:
    """Put one delivery back as ``QoS.restore_by_tag`` does; the queues it went to.

    ``record``: the node's record, unprefixed (the prefix is added once, by ``_command``).
    ``task_id``, ``node``: what the notice on ``_tide.redelivered`` says.

    ``[]``: it was no longer unacknowledged (only the record entry is dropped). ``None``:
    no queue is bound to its exchange and routing key any more; nothing changed.
    """
    from kombu.utils.json import loads

    queues: list[str] = []

    def transaction(pipe: Any) -> None:
        queues.clear()
        payload = pipe.hget(channel.unacked_key, tag)
        pipe.multi()
        if not payload:
            _command(pipe, "HDEL", record, tag, prefix=prefix)
            return
        message, exchange, routing_key = loads(_decode(payload))  # type: ignore[no-untyped-call]
        found = [str(q) for q in channel._lookup(exchange, routing_key)]
        if not found:
            raise _Abandon
        qos._remove_from_indices(tag, pipe)
        before = len(pipe.command_stack)
        channel._do_restore_message(message, exchange, routing_key, pipe, False)
        if len(pipe.command_stack) == before:
            raise _Abandon  # kombu logged why it could not push the message
        _command(pipe, "HDEL", record, tag, prefix=prefix)
        for queue in found:
            _command(pipe, "HINCRBY", RECOVERED_KEY, queue, 1, prefix=prefix)
        if task_id:
            notice = json.dumps([task_id, node, found[0], time.time()])
            _command(pipe, "RPUSH", REDELIVERED_KEY, notice, prefix=prefix)
            _command(pipe, "LTRIM", REDELIVERED_KEY, -REDELIVERED_MAX, -1, prefix=prefix)
            _command(pipe, "EXPIRE", REDELIVERED_KEY, REDELIVERED_TTL, prefix=prefix)
        queues.extend(found)

    try:
        with channel.conn_or_acquire() as client:
            client.transaction(transaction, channel.unacked_key)
    except _Abandon:
        log.error("message %s has no queue bound to its route; left for the visibility sweep", tag)
        return None
    return list(queues)


def recover(
    url: str, node: str, *, transport_options: Mapping[str, Any] | None = None
) -> Recovered | None:
    """``recover_node`` on the broker at ``url``; ``None`` when it is not Redis."""
    from kombu.connection import Connection

    options = dict(transport_options or {})
    with Connection(url, transport_options=options) as connection:  # type: ignore[no-untyped-call]
        if connection.transport.driver_type != "redis":
            return None
        return recover_node(connection.default_channel, node)


async def recover_when_lapsed(
    attempt: Callable[[], Recovered | None],
    *,
    give_up_after: float = GIVE_UP_AFTER,
    clock: Callable[[], float] = time.monotonic,
    on_attempt: Callable[[Recovered], None] | None = None,
) -> Recovered | None:
    """Run ``attempt`` (a blocking ``recover``) in a thread until no live lease is left.

    A worker reported dead whose lease is still live is waited for: its lease lapses
    ``LEASE_TTL`` seconds after its last renewal if it is really dead. One that keeps
    renewing for ``give_up_after`` seconds is alive: its holdings stay with it. Returns
    everything restored over the attempts, or ``None`` on a broker that needs no recovery.
    """
    started = clock()
    total: Recovered | None = None
    while True:
        result = await asyncio.to_thread(attempt)
        if result is None:
            return total
        total = result if total is None else total.merged(result)
        if on_attempt is not None:
            on_attempt(total)
        if result.complete:
            return total
        if clock() - started >= give_up_after:
            log.warning(
                "%s keeps its lease %.0fs after it was reported dead: it lives; "
                "its %d message(s) stay with it",
                result.node,
                give_up_after,
                result.leased,
            )
            return total
        # Nothing can change before the live lease's current expiry (only a renewal moves
        # it, later): sleep until then and look once, rather than polling meanwhile.
        await asyncio.sleep(min(max(result.lease_remaining, 0.0) + 0.05, LEASE_TTL))


class Recoveries:
    """Recoveries for one broker, started as deaths are seen; used by local mode and the
    operator, which learn of a death in their own way and hand the node name over here.

    ``lost(node)`` starts ``recover_when_lapsed`` for it in the running event loop and
    returns at once; ``on_recovered(result, reason, context)`` is called with the outcome
    and what the caller passed (to count it and say it: an Event on the pool, a log line).
    A node already being recovered is not started twice. ``settle()`` waits for the
    recoveries in flight (tests, shutdown).
    """

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        on_recovered: Callable[[Recovered, str, Any], None] | None = None,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.url = url
        self.transport_options = dict(transport_options or {})
        self.on_recovered = on_recovered
        self.give_up_after = give_up_after
        #: Every outcome so far, oldest first (what local mode's view and tests read).
        self.results: list[Recovered] = []
        #: node -> what the recovery in flight has done so far (it may wait on a lease).
        self.pending: dict[str, Recovered] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def lost(self, node: str, *, reason: str = "", context: Any = None) -> None:
        """``node`` is gone for good (``reason`` says how); recover it in the background."""
        if node in self._tasks or not self.url.startswith(("redis", "sentinel")):
            # RabbitMQ requeues a closed connection's unacknowledged messages itself.
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("%s is gone but no event loop runs to recover it", node)
            return
        task = loop.create_task(self._recover(node, reason, context))
        self._tasks[node] = task
        task.add_done_callback(lambda _: self._forget(node))

    def _forget(self, node: str) -> None:
        self._tasks.pop(node, None)
        self.pending.pop(node, None)

    async def _recover(self, node: str, reason: str, context: Any) -> None:
        try:
            result = await recover_when_lapsed(
                lambda: recover(self.url, node, transport_options=self.transport_options),
                give_up_after=self.give_up_after,
                on_attempt=lambda so_far: self.pending.__setitem__(node, so_far),
            )
        except Exception:
            # The broker may be away: the transport's visibility timeout still applies.
            log.warning("recovery of %s failed", node, exc_info=True)
            return
        if result is None:
            return
        self.results.append(result)
        if self.on_recovered is not None:
            try:
                self.on_recovered(result, reason, context)
            except Exception:
                log.warning("reporting the recovery of %s failed", node, exc_info=True)

    async def settle(self) -> None:
        """Wait for every recovery in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
