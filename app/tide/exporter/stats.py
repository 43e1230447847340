"""What one read of a queue observed, and the pure functions that derive it from payloads.

``QueueStats`` is the exporter's unit of exchange: readers produce it, the collector
formats it, ``parse_exposition`` rebuilds it from ``/metrics`` text, the API shows it. It
is frozen so a figure read once cannot be altered on its way to Prometheus.

The functions here see only decoded broker payloads and the current time (an argument,
never read from the clock), so they are tested without a broker: where Celery keeps the
publish stamp and the ETA in a message, how a message's age is measured, and how an
unacknowledged message is classed as running work or as waiting for its ETA.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tide_celery.layout import PUBLISHED_AT_HEADER

# Where a figure came from, as shown in ``tide_exporter_queue_source_info``.
SOURCE_REDIS = "redis"
SOURCE_RABBITMQ_MANAGEMENT = "rabbitmq-management"
SOURCE_AMQP = "amqp"
SOURCE_KOMBU = "kombu"


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The observations of one queue at one read.

    ``waiting`` is the messages ready for a consumer, summed over priority sub-queues.
    ``inflight`` is delivered and not yet acknowledged, excluding ETA tasks that are only
    held until their time (those are ``scheduled``). A figure the source cannot give is
    ``None`` (for example in-flight work over plain AMQP), never a guessed 0.
    ``oldest_age`` is seconds since the oldest waiting message was published: 0.0 when
    nothing waits, ``None`` when messages wait but none carries a publish stamp.
    ``stale`` is true when these are the last good values kept through a failed read.
    ``completed`` is a monotonic count of messages that left the queue (finished tasks:
    the integration's workers count them on Redis, RabbitMQ counts acks), ``None`` where
    nothing keeps such a count: on Redis, a queue no worker with the integration serves or
    ever finished a task on.
    ``running`` is the tasks executing now, as the integration's workers report them
    (Redis), ``None`` where no worker with the integration serves the queue. On Redis
    ``inflight`` already includes them (the union of unacknowledged and running messages,
    so a late-ack task counts once and an early-ack one is not missed).
    ``recovered`` is a monotonic count of messages dead workers held unacknowledged that
    dead-worker recovery put back in the queue (``tide_celery.recovery``; Redis), ``None``
    where ``completed`` is.
    """

    name: str
    waiting: int
    inflight: int | None
    scheduled: int | None
    oldest_age: float | None
    source: str
    stale: bool = False
    completed: int | None = None
    running: int | None = None
    recovered: int | None = None


@dataclass(frozen=True, slots=True)
class UnackedEntry:
    """One message in a Redis transport's ``unacked`` hash, reduced to what is counted."""

    queue: str
    #: Epoch seconds of the task's ETA, or ``None`` for a task to run at once.
    eta: float | None
    #: The task id (Celery's message protocol 2 header ``id``), to match running tasks.
    task_id: str | None = None


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO-8601 string; ``None`` if it is neither.

    Celery writes ``eta`` as ISO-8601 with an offset; a naive value is read as UTC, which
    is what Celery means by it when ``enable_utc`` is on (the default).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def message_headers(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """The application headers of a kombu virtual-transport message (``{}`` if absent)."""
    headers = message.get("headers")
    return headers if isinstance(headers, Mapping) else {}


# ``"published_at": <number>`` in a serialized kombu message can only be the header itself:
# kombu base64-encodes the body, and a header string that mentions the name has its quotes
# escaped (``\\"published_at\\"``), which this pattern does not match.
_PUBLISHED_AT = re.compile(rb'"' + PUBLISHED_AT_HEADER.encode() + rb'"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def published_at(raw: bytes | str | None) -> float | None:
    """The ``published_at`` stamp of a serialized message, or ``None``.

    Found by pattern rather than by decoding the JSON: a message is kilobytes (the body is
    in it) and the reader looks at one per non-empty priority list on every read, where a
    full decode costs ten times the search. Messages from producers that do not stamp
    (other services, old clients) give ``None``: the caller counts them but takes no age.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode()
    match = _PUBLISHED_AT.search(raw)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def oldest_age(stamps: Iterable[float | None], *, waiting: int, now: float) -> float | None:
    """Age of the oldest waiting message given the publish stamps of each list's tail.

    Each priority list is FIFO (``LPUSH`` in, ``RPOP`` out), so its tail is its oldest
    message, and the oldest over all lists is the oldest of the tails. A negative age
    (producer clock ahead of the exporter's) is clamped to 0: it cannot mean anything else.
    """
    if waiting == 0:
        return 0.0
    known = [stamp for stamp in stamps if stamp is not None]
    if not known:
        return None
    return max(0.0, now - min(known))


def parse_unacked(
    raw: bytes | str, *, routes: Mapping[tuple[str, str], str] | None = None
) -> UnackedEntry | None:
    """Decode one value of the ``unacked`` hash: JSON ``[message, exchange, routing_key]``.

    The queue is found from the exchange and routing key through the broker's binding
    table when one is known (a message published to a named exchange), else it is the
    routing key itself, which is what Celery uses when it publishes to the default
    exchange. ``None`` for a value that is not in kombu's format.
    """
    try:
        decoded = json.loads(raw)
        message, exchange, routing_key = decoded
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(message, Mapping):
        return None
    exchange = exchange or ""
    routing_key = routing_key or ""
    queue = (routes or {}).get((exchange, routing_key), routing_key)
    headers = message_headers(message)
    task_id = headers.get("id")
    return UnackedEntry(
        queue=queue,
        eta=parse_timestamp(headers.get("eta")),
        task_id=task_id if isinstance(task_id, str) else None,
    )


def count_unacked(entries: Iterable[UnackedEntry], *, now: float) -> dict[str, tuple[int, int]]:
    """Per queue, ``(inflight, scheduled)`` of unacknowledged entries at ``now``.

    A worker takes an ETA task from the queue at once and holds it unacknowledged until its
    time comes, so it sits beside running work; it is not work in progress and a scaler
    must not keep a worker for it. Once its ETA has passed it counts as in flight.
    """
    counts: dict[str, list[int]] = {}
    for entry in entries:
        pair = counts.setdefault(entry.queue, [0, 0])
        if entry.eta is not None and entry.eta > now:
            pair[1] += 1
        else:
            pair[0] += 1
    return {queue: (pair[0], pair[1]) for queue, pair in counts.items()}
