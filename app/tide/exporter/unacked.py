"""Exact in-flight counts from kombu's Redis ``unacked`` hash, at a cost bounded by change.

The Redis transport emulates acknowledgements with two keys written together in one
MULTI: ``unacked`` (hash: delivery tag -> JSON ``[message, exchange, routing_key]``) and
``unacked_index`` (sorted set: delivery tag -> delivery time). Every prefetched, running or
ETA-held message of every queue is in them. Reading the hash whole each scrape (``HGETALL``)
costs O(N) in Redis time and bytes: at 10,000 entries it moves ~15 MB and blocks the server
for milliseconds, on every scrape, for figures that barely changed.

This tracker keeps a cache of what it has already decoded and asks Redis only what
changed, without giving up exactness:

* The index's score axis is cut into *buckets* ``(lo, hi]`` with about ``bucket_size``
  known tags each, covering everything up to a *frontier*. Each read sends one ``ZCOUNT``
  per bucket (O(log N) each) and one ``ZRANGEBYSCORE`` for the *tail* above the frontier,
  in the same pipelined round trip as the queue lengths.
* A bucket whose count differs from the cache is re-listed (a second round trip, only
  then); only tags never seen before have their payload fetched (``HMGET``, a third round
  trip, only then). Tags gone from the index are dropped. A steady state with nothing
  acknowledged costs a few ``ZCOUNT``; an acknowledgement costs one bucket's listing.
* The frontier trails the current time by ``slack`` seconds, and the tail is re-listed on
  every read: a delivery stamped at time *t* may be written after one stamped later (two
  worker hosts, or two threads between ``time()`` and ``ZADD``), so the newest scores are
  not trusted to be complete until ``slack`` has passed.

Equal counts can hide a change only if, inside one bucket and between two reads, one
entry is acknowledged while another is written with a score older than the frontier,
that is, by a worker whose clock lags by more than ``slack``. A full re-listing every
``resync_interval`` (tags only; payloads stay cached) bounds how long such an error lives.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tide.exporter.stats import UnackedEntry, parse_unacked
from tide.exporter.wire import RawBatch, execute

# HMGET batch size: each command stays short (Redis serves other clients between commands
# of a pipeline, not inside one), while a cold start still needs few round trips.
_HMGET_BATCH = 500


@dataclass(slots=True)
class Bucket:
    """Tags of the index whose score lies in ``(lo, hi]``, as of the last read."""

    lo: float
    hi: float
    tags: dict[str, float] = field(default_factory=dict)


def _score_arg(value: float, *, exclusive: bool = False) -> str:
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    # repr() is the shortest string that parses back to the same double, so a bound sent
    # to Redis is exactly the score Redis returned.
    return f"({value!r}" if exclusive else repr(value)


def split_range(
    items: Sequence[tuple[str, float]], *, lo: float, hi: float, size: int
) -> list[Bucket]:
    """Cut ``(lo, hi]`` into buckets of about ``size`` items; ``items`` sorted by score.

    Cuts fall only between distinct scores, so two tags with the same score never sit on
    both sides of a boundary (``ZCOUNT`` could not tell them apart). The buckets always
    cover the whole range, also when it holds no item.
    """
    buckets: list[Bucket] = []
    current = Bucket(lo=lo, hi=hi)
    for index, (tag, score) in enumerate(items):
        current.tags[tag] = score
        following = items[index + 1][1] if index + 1 < len(items) else None
        if len(current.tags) >= size and following is not None and following > score:
            current.hi = score
            buckets.append(current)
            current = Bucket(lo=score, hi=hi)
    buckets.append(current)
    return buckets


def normalize(buckets: list[Bucket], *, size: int) -> list[Bucket]:
    """Merge neighbours that fit in one bucket and split those grown past twice ``size``.

    This keeps the number of ``ZCOUNT`` per read near N / ``size`` whatever the history of
    deliveries and acknowledgements.
    """
    merged: list[Bucket] = []
    for bucket in buckets:
        if merged and len(merged[-1].tags) + len(bucket.tags) <= size:
            merged[-1].hi = bucket.hi
            merged[-1].tags.update(bucket.tags)
        else:
            merged.append(bucket)
    result: list[Bucket] = []
    for bucket in merged:
        if len(bucket.tags) > 2 * size:
            items = sorted(bucket.tags.items(), key=lambda item: item[1])
            result.extend(split_range(items, lo=bucket.lo, hi=bucket.hi, size=size))
        else:
            result.append(bucket)
    return result


def _decode_pairs(reply: Iterable[tuple[Any, float]]) -> list[tuple[str, float]]:
    return [
        (tag.decode() if isinstance(tag, bytes) else str(tag), float(score)) for tag, score in reply
    ]


class UnackedTracker:
    """The cached view of one ``unacked``/``unacked_index`` pair (keys fully prefixed).

    Use: ``commands(now=…)`` is this tracker's share of a read, sent with the queue
    lengths; ``apply(replies, pool=…, routes=…, now=…)`` takes this tracker's replies (in
    order) and does the extra round trips a change needs.
    """

    def __init__(
        self,
        *,
        hash_key: str,
        index_key: str,
        bucket_size: int = 256,
        slack: float = 2.0,
        resync_interval: float = 60.0,
    ) -> None:
        self.hash_key = hash_key
        self.index_key = index_key
        self.bucket_size = bucket_size
        self.slack = slack
        self.resync_interval = resync_interval
        self.entries: dict[str, UnackedEntry] = {}
        self._immediate: Counter[str] = Counter()
        #: Task ids of the cached entries, to tell a running task that is also unacked.
        self._task_ids: Counter[str] = Counter()
        self._eta: dict[str, UnackedEntry] = {}
        self._full = True
        self._buckets: list[Bucket] = []
        self._frontier = -math.inf
        self._tail: dict[str, float] = {}
        self._resync_at = -math.inf
        #: Round trips and index entries listed by the last ``apply`` (for the benchmark).
        self.last_round_trips = 0
        self.last_listed = 0
        self.last_fetched = 0

    def reset(self) -> None:
        """Forget the bucket layout (payloads stay cached); the next read lists all tags."""
        self._buckets = []
        self._frontier = -math.inf
        self._tail = {}
        # The next listing covers every score: whatever the cache holds beyond it is gone.
        self._full = True

    def commands(self, *, now: float) -> list[tuple[Any, ...]]:
        """One ``ZCOUNT`` per bucket and the tail listing, to send with the queue lengths."""
        if now >= self._resync_at:
            self.reset()
            self._resync_at = now + self.resync_interval
        commands: list[tuple[Any, ...]] = [
            ("ZCOUNT", self.index_key, _score_arg(bucket.lo, exclusive=True), _score_arg(bucket.hi))
            for bucket in self._buckets
        ]
        commands.append(self._listing(self._frontier, math.inf))
        return commands

    def _listing(self, lo: float, hi: float) -> tuple[Any, ...]:
        return (
            "ZRANGEBYSCORE",
            self.index_key,
            _score_arg(lo, exclusive=True),
            _score_arg(hi),
            "WITHSCORES",
        )

    def apply(
        self,
        replies: Sequence[Any],
        *,
        pool: Any,
        routes: Mapping[tuple[str, str], str],
        now: float,
    ) -> None:
        """Bring the cache up to date from this tracker's replies of the shared read."""
        counts, tail = replies[:-1], _decode_pairs(replies[-1])
        self.last_round_trips, self.last_listed, self.last_fetched = 0, len(tail), 0
        changed = [
            index
            for index, (bucket, count) in enumerate(zip(self._buckets, counts, strict=True))
            if int(count) != len(bucket.tags)
        ]
        relisted: dict[int, list[tuple[str, float]]] = {}
        if changed:
            batch = RawBatch(
                [self._listing(self._buckets[i].lo, self._buckets[i].hi) for i in changed]
            )
            for index, reply in zip(changed, execute(pool, batch), strict=True):
                relisted[index] = _decode_pairs(reply)
                self.last_listed += len(relisted[index])
            self.last_round_trips += 1

        buckets: list[Bucket] = []
        for index, bucket in enumerate(self._buckets):
            if index in relisted:
                buckets.extend(
                    split_range(relisted[index], lo=bucket.lo, hi=bucket.hi, size=self.bucket_size)
                )
            else:
                buckets.append(bucket)

        # Seal the part of the tail older than ``slack`` seconds; the rest stays in the tail
        # and is listed again next time. Scores are the workers' wall clocks, as is ``now``.
        frontier = max(self._frontier, now - self.slack)
        sealed = [(tag, score) for tag, score in tail if score <= frontier]
        if frontier > self._frontier:
            if buckets and not sealed:
                buckets[-1].hi = frontier
            else:
                buckets.extend(
                    split_range(sealed, lo=self._frontier, hi=frontier, size=self.bucket_size)
                )
        # What was listed replaces what was known in the same score ranges; only those
        # ranges are compared, so a read where nothing changed does no O(N) work here.
        listed = {tag for tag, _ in tail}
        for pairs in relisted.values():
            listed.update(tag for tag, _ in pairs)
        if self._full:
            known: set[str] = set(self.entries)
        else:
            known = set(self._tail)
            for index in relisted:
                known.update(self._buckets[index].tags)
        # Acknowledged (or restored) messages leave the index; drop their decoded payloads.
        for tag in known - listed:
            self._drop(tag)

        self._buckets = normalize(buckets, size=self.bucket_size)
        self._frontier = frontier
        self._tail = {tag: score for tag, score in tail if score > frontier}
        self._full = False
        missing = [tag for tag in listed if tag not in self.entries]
        if missing:
            self._fetch(missing, pool=pool, routes=routes)

    def counts(self, *, now: float) -> dict[str, tuple[int, int]]:
        """Per queue, ``(inflight, scheduled)`` at ``now``, from the cache.

        Entries without an ETA are counted as they come and go; only ETA entries, whose
        class changes with time, are looked at on each call.
        """
        result = {queue: (count, 0) for queue, count in self._immediate.items() if count}
        for entry in self._eta.values():
            inflight, scheduled = result.get(entry.queue, (0, 0))
            if entry.eta is not None and entry.eta > now:
                scheduled += 1
            else:
                inflight += 1
            result[entry.queue] = (inflight, scheduled)
        return result

    def holds(self, task_id: str) -> bool:
        """Whether a message of ``task_id`` is unacknowledged (as of the last read)."""
        # Ids leave the counter at zero (``_drop``), so membership is the answer.
        return task_id in self._task_ids

    def _add(self, tag: str, entry: UnackedEntry) -> None:
        self.entries[tag] = entry
        if entry.task_id is not None:
            self._task_ids[entry.task_id] += 1
        if entry.eta is None:
            self._immediate[entry.queue] += 1
        else:
            self._eta[tag] = entry

    def _drop(self, tag: str) -> None:
        entry = self.entries.pop(tag, None)
        if entry is None:
            return
        if entry.task_id is not None:
            self._task_ids[entry.task_id] -= 1
            if self._task_ids[entry.task_id] <= 0:
                del self._task_ids[entry.task_id]
        if entry.eta is None:
            self._immediate[entry.queue] -= 1
        else:
            self._eta.pop(tag, None)

    def _fetch(self, tags: list[str], *, pool: Any, routes: Mapping[tuple[str, str], str]) -> None:
        batch = RawBatch(
            [
                ("HMGET", self.hash_key, *tags[start : start + _HMGET_BATCH])
                for start in range(0, len(tags), _HMGET_BATCH)
            ]
        )
        replies = execute(pool, batch)
        self.last_round_trips += 1
        self.last_fetched = len(tags)
        values = [value for batch in replies for value in batch]
        for tag, value in zip(tags, values, strict=True):
            # None: acknowledged between the listing and now. It leaves the index as well,
            # so the next read's count for its bucket differs and the bucket is re-listed.
            if value is None:
                continue
            entry = parse_unacked(value, routes=routes)
            if entry is not None:
                self._add(tag, entry)
