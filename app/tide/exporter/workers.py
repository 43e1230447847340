"""The integration's worker registrations, read: which queues they serve, what runs now.

Workers with Tide's integration (``tide_celery``) keep, under the broker's key prefix, a
sorted set of live nodes (``_tide.workers``: node -> expiry) and per node a hash of the
queues it consumes and the tasks it runs (``_tide.worker.<node>``); ``tide_celery.workers``
explains why and how stale it can be. This module reads them with the exporter's own
round trip:

* every read sends ``ZRANGEBYSCORE _tide.workers <now> +inf`` (the live nodes) and one
  ``HGETALL`` per node that was live at the previous read, in the same pipelined write as
  the queue lengths, so a steady pool costs no extra round trip;
* a node that appears live without having been fetched (a new worker) is fetched in a
  second round trip, only then; a node no longer live is dropped, whatever its hash says.

``parse_node`` is the one parser of a node's hash; ``RegistrySnapshot`` is what a read
found: the queues some live integration worker serves, and each running task's queue.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tide.exporter.wire import RawBatch, execute
from tide_celery.layout import QUEUES_FIELD, TASK_FIELD_PREFIX, WORKERS_KEY, worker_key


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class NodeState:
    """One worker's registration: the queues it consumes and task id -> queue it runs."""

    queues: frozenset[str] = frozenset()
    tasks: Mapping[str, str] = field(default_factory=dict)


def parse_node(reply: Any) -> NodeState:
    """A node's ``HGETALL`` reply (RESP2: a flat list, or a dict) as a ``NodeState``."""
    if isinstance(reply, Mapping):
        pairs = [(_text(k), _text(v)) for k, v in reply.items()]
    else:
        items = list(reply or [])
        pairs = [(_text(items[i]), _text(items[i + 1])) for i in range(0, len(items) - 1, 2)]
    queues: frozenset[str] = frozenset()
    tasks: dict[str, str] = {}
    for name, value in pairs:
        if name == QUEUES_FIELD:
            try:
                decoded = json.loads(value)
            except ValueError:
                continue
            if isinstance(decoded, list):
                queues = frozenset(str(queue) for queue in decoded)
        elif name.startswith(TASK_FIELD_PREFIX):
            tasks[name[len(TASK_FIELD_PREFIX) :]] = value
    return NodeState(queues=queues, tasks=tasks)


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the live integration workers said at one read, with its sums made once."""

    nodes: Mapping[str, NodeState] = field(default_factory=dict)
    #: Queues at least one live integration worker consumes.
    served: frozenset[str] = frozenset()
    #: (task id, queue) of every task the live workers run now.
    tasks: tuple[tuple[str, str], ...] = ()
    #: Queue -> tasks running on it now.
    running_per_queue: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Mapping[str, NodeState]) -> RegistrySnapshot:
        tasks = tuple(item for node in nodes.values() for item in node.tasks.items())
        return cls(
            nodes=nodes,
            served=frozenset(queue for node in nodes.values() for queue in node.queues),
            tasks=tasks,
            running_per_queue=Counter(queue for _, queue in tasks),
        )


class RegistryReader:
    """Reads the registrations under one key prefix, remembering which nodes are live.

    A steady pool costs little beyond the bytes: the ``HGETALL`` commands are packed once
    while the live nodes stay the same, and a node's reply that equals its last one is not
    parsed again; when no reply changed, the last snapshot (and its sums) is reused.
    """

    def __init__(self, *, prefix: str) -> None:
        self.prefix = prefix
        self._known: tuple[str, ...] = ()
        self._fetch = RawBatch([])
        self._raw: dict[str, Any] = {}
        self._states: dict[str, NodeState] = {}
        self._snapshot = RegistrySnapshot()
        #: Round trips the last ``apply`` needed beyond the shared one (for the benchmark).
        self.last_round_trips = 0

    def commands(self, *, now: float) -> list[tuple[Any, ...]]:
        """The live-node query (its bound moves with ``now``); see ``fetch_batch``."""
        return [("ZRANGEBYSCORE", self.prefix + WORKERS_KEY, f"({now!r}", "+inf")]

    @property
    def fetch_batch(self) -> RawBatch:
        """One ``HGETALL`` per node live at the last read, packed once per set of nodes."""
        return self._fetch

    def _state(self, node: str, reply: Any) -> NodeState:
        if self._raw.get(node) != reply or node not in self._states:
            self._raw[node] = reply
            self._states[node] = parse_node(reply)
        return self._states[node]

    def apply(
        self, live_reply: Any, fetched_replies: Sequence[Any], *, pool: Any
    ) -> RegistrySnapshot:
        """The snapshot from this reader's share of the read (fetching new nodes)."""
        live = tuple(sorted(_text(node) for node in live_reply))
        changed = False
        for node, reply in zip(self._known, fetched_replies, strict=True):
            changed |= self._raw.get(node) != reply
            self._state(node, reply)
        known = set(self._known)
        missing = [node for node in live if node not in known]
        self.last_round_trips = 0
        if missing:
            batch = RawBatch([("HGETALL", self.prefix + worker_key(node)) for node in missing])
            for node, reply in zip(missing, execute(pool, batch), strict=True):
                self._state(node, reply)
            self.last_round_trips = 1
        if live != self._known:
            changed = True
            self._known = live
            self._fetch = RawBatch([("HGETALL", self.prefix + worker_key(n)) for n in live])
            for gone in set(self._raw) - set(live):
                self._raw.pop(gone, None)
                self._states.pop(gone, None)
        if changed:
            self._snapshot = RegistrySnapshot.of({node: self._states[node] for node in live})
        return self._snapshot
