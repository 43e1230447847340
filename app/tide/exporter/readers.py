"""Queue readers: one small interface, "what are the queue observations now", per broker.

A ``QueueReader`` turns a list of queue names into ``QueueStats`` and can list the queues
the broker knows about (its bindings). It owns its broker connection and whatever cache
makes reading cheap; it holds no Prometheus or HTTP state, so the poller, the API
(``read_queues``), the benchmark and the tests all call the same code.

* ``RedisQueueReader`` reads every queue in one pipelined round trip: ``LLEN`` and
  ``LINDEX -1`` (the list's oldest message, for the age) on each priority list, and the
  in-flight tracker's ``ZCOUNT``s (see ``tide.exporter.unacked``), sent as one pre-packed
  write (see ``tide.exporter.wire`` for why not ``redis.Pipeline``). A Lua script doing the
  same server-side was tried and measured 1.7 ms of Redis time for 100 queues against
  0.4 ms for plain commands (each ``redis.call`` costs ~1 µs), so it was dropped. Key names
  come from kombu's own channel (``_q_for_pri``, ``priority_steps``, ``sep``,
  ``unacked_key``, ``global_keyprefix``, the DB from the URL), never from a hand-written
  layout, so they follow the transport options the workers use. ``waiting`` equals
  kombu's ``_size`` (the tests check it). kombu's *passive* ``queue_declare`` is not used:
  its existence check sends ``EXISTS``, which kombu's prefixing client does not prefix,
  so with a ``global_keyprefix`` it answers 404 for a queue full of messages (kombu
  5.7.0). For the same reason the reader prefixes keys itself on a plain client over
  kombu's connection pool. The same write carries one ``HMGET`` of the workers'
  completion counters (``tide_celery.completions``: a hash under the same prefix, one field per
  queue; an absent field reads 0), so ``completed`` costs one command, not one per queue.
* ``RabbitMQReader`` with a management URL reads all queues in one HTTP request
  (``messages_ready``, ``messages_unacknowledged``, ``head_message_timestamp``, and
  ``message_stats.ack``, the broker's own cumulative count of acknowledged messages, as
  ``completed``); those figures are RabbitMQ's statistics, refreshed every
  ``collect_statistics_interval`` (5 s by default). The head timestamp covers the
  unacknowledged messages too, so the oldest age is given only while none is (else it is
  absent: the oldest *waiting* message's stamp cannot be read without taking it). The
  ack count lives in the management database: a node restart or a re-created queue
  starts it again from 0, which consumers treat as a counter reset. Without a management
  URL the reader falls back to AMQP passive declares, which see only ready messages:
  in-flight and completions are then unknown (``None``) rather than a false 0.
* ``KombuQueueReader`` serves any other kombu transport the same way (waiting only).

A queue nobody declared reads 0 on every broker: kombu's 404 ``ChannelError`` and
RabbitMQ's absent queue both mean "nothing waits there yet", which is exactly what scale
from zero needs to see.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import httpx
import redis
from kombu.connection import Connection

from tide.exporter.stats import (
    SOURCE_AMQP,
    SOURCE_KOMBU,
    SOURCE_RABBITMQ_MANAGEMENT,
    SOURCE_REDIS,
    QueueStats,
    oldest_age,
    published_at,
)
from tide.exporter.tasks import TaskFigures, parse_tasks
from tide.exporter.unacked import UnackedTracker
from tide.exporter.wire import RawBatch, execute
from tide.exporter.workers import RegistryReader, RegistrySnapshot
from tide_celery.layout import COMPLETED_KEY, RECOVERED_KEY, TASKS_KEY

log = logging.getLogger(__name__)

#: Socket timeouts applied when the transport options set none: a broker that stops
#: answering must fail a read quickly (the exporter then serves stale values) instead of
#: hanging the poller until the kernel gives up.
DEFAULT_SOCKET_TIMEOUT = 3.0


class QueueReader(Protocol):
    """Reads queue observations from one broker."""

    #: Names the source on ``/metrics`` (``tide_exporter_queue_source_info``).
    source: str

    def read(self, names: Sequence[str], *, now: float) -> list[QueueStats]:
        """Observations of ``names`` now (``now``: epoch seconds, for ages)."""
        ...

    def discover(self) -> set[str]:
        """Queue names the broker knows (bindings, declared queues), Celery internals excluded."""
        ...

    def close(self) -> None:
        """Drop the connection; the next call reconnects."""
        ...


def is_internal_queue(name: str) -> bool:
    """Celery's own reply and event queues: never work a scaler should see."""
    return (
        not name
        or name.endswith(".pidbox")
        or name.startswith(("celeryev.", "amq."))
        or name.endswith(".reply.celery.pidbox")
    )


class RedisQueueReader:
    """Exact waiting, in-flight, scheduled and oldest age for kombu's Redis transport."""

    source = SOURCE_REDIS

    def __init__(
        self,
        *,
        url: str,
        transport_options: Mapping[str, Any] | None = None,
        bucket_size: int = 256,
        slack: float = 2.0,
        resync_interval: float = 60.0,
        completions: bool = True,
    ) -> None:
        options = dict(transport_options or {})
        options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        options.setdefault("socket_connect_timeout", DEFAULT_SOCKET_TIMEOUT)
        self._url = url
        self._options = options
        self._bucket_size = bucket_size
        self._slack = slack
        self._resync_interval = resync_interval
        #: Read the workers' completion counters (``False``: ``completed`` is ``None``).
        self.completions = completions
        self._connection: Connection | None = None
        self._channel: Any = None
        self._client: redis.Redis | None = None
        self.tracker: UnackedTracker | None = None
        self.registry: RegistryReader | None = None
        #: What the integration's workers said at the last read.
        self.last_registry = RegistrySnapshot()
        #: The workers' per-task counters at the last read (``None``: not read, as with
        #: ``completions=False``).
        self.last_tasks: TaskFigures | None = None
        #: (exchange, routing_key) -> queue, from the binding tables seen by ``discover``.
        self.routes: dict[tuple[str, str], str] = {}
        self._keys: dict[str, list[str]] = {}
        self._layout: tuple[list[str], list[int], RawBatch] | None = None

    # -- connection ----------------------------------------------------------------------

    def _ensure(self) -> tuple[Any, redis.Redis]:
        if self._client is None:
            connection = Connection(self._url, transport_options=self._options)
            _refuse_fast(connection)
            try:
                # Creating the channel pings Redis, so an outage fails here, cleanly.
                channel: Any = connection.default_channel
            except Exception:
                connection.release()
                raise
            prefix = channel.global_keyprefix
            self._connection, self._channel = connection, channel
            self._client = redis.Redis(connection_pool=channel.pool)
            if self.tracker is None or self.tracker.hash_key != prefix + channel.unacked_key:
                self.tracker = UnackedTracker(
                    hash_key=prefix + channel.unacked_key,
                    index_key=prefix + channel.unacked_index_key,
                    bucket_size=self._bucket_size,
                    slack=self._slack,
                    resync_interval=self._resync_interval,
                )
            if self.registry is None or self.registry.prefix != prefix:
                self.registry = RegistryReader(prefix=prefix)
            self._keys = {}
            self._layout = None
        return self._channel, self._client

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # Closing a broken connection may fail too.
                log.debug("closing the Redis connection failed", exc_info=True)
        self._connection = self._channel = self._client = None

    def priority_keys(self, queue: str) -> list[str]:
        """The fully prefixed keys of ``queue``'s priority lists, as kombu names them."""
        keys = self._keys.get(queue)
        if keys is None:
            channel, _ = self._ensure()
            prefix = channel.global_keyprefix
            # dict.fromkeys: steps that map to one list (coarse steps) are read once.
            names = dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps)
            keys = self._keys[queue] = [prefix + name for name in names]
        return keys

    # -- reading -------------------------------------------------------------------------

    def read(self, names: Sequence[str], *, now: float) -> list[QueueStats]:
        channel, _ = self._ensure()
        assert self.tracker is not None
        names = list(names)
        if self._layout is None or self._layout[0] != names:
            # LLEN and LINDEX -1 (the list's oldest message) for every priority list of
            # every queue, packed once and re-sent while the watch list is unchanged.
            keys = [self.priority_keys(name) for name in names]
            commands: list[tuple[Any, ...]] = [
                command
                for queue_keys in keys
                for key in queue_keys
                for command in (("LLEN", key), ("LINDEX", key, -1))
            ]
            if self.completions and names:
                # One HMGET for every queue's counter; a queue no task finished on yet has
                # no field, and reads 0.
                commands.append(("HMGET", channel.global_keyprefix + COMPLETED_KEY, *names))
                # And the messages dead workers held that recovery put back (same shape).
                commands.append(("HMGET", channel.global_keyprefix + RECOVERED_KEY, *names))
            self._layout = (names, [len(queue_keys) for queue_keys in keys], RawBatch(commands))
        _, widths, depth = self._layout
        assert self.registry is not None
        # One write, one read: queue depths, the tracker's counts and the integration's
        # worker registrations travel together. No MULTI: Redis serves the workers between
        # our commands instead of stalling them, and atomicity would buy nothing, as
        # kombu's own move from list to unacked (BRPOP, then ZADD/HSET) is not atomic either.
        tracked = RawBatch(self.tracker.commands(now=now))
        live = RawBatch(self.registry.commands(now=now))
        fetch = self.registry.fetch_batch
        # The per-task counters ride in the same write (tide.exporter.tasks), last, so the
        # positions of everything before them stay as they were.
        tasks = RawBatch(
            [("HGETALL", channel.global_keyprefix + TASKS_KEY)] if self.completions else []
        )
        replies = execute(channel.pool, depth, tracked, live, tasks, fetch)
        if self.completions:
            self.last_tasks = parse_tasks(replies[len(depth) + len(tracked) + len(live)])
            del replies[len(depth) + len(tracked) + len(live)]
        end_of_tracked = len(depth) + len(tracked)
        self.tracker.apply(
            replies[len(depth) : end_of_tracked], pool=channel.pool, routes=self.routes, now=now
        )
        registry = self.last_registry = self.registry.apply(
            replies[end_of_tracked], replies[end_of_tracked + 1 :], pool=channel.pool
        )
        unacked = self.tracker.counts(now=now)
        counted = self.completions and bool(names)
        completed: list[Any] = list(replies[len(depth) - 2]) if counted else [None] * len(names)
        recovered: list[Any] = list(replies[len(depth) - 1]) if counted else [None] * len(names)
        running = registry.running_per_queue
        # Running tasks whose message is acknowledged already (early acks): in flight, yet
        # invisible in the unacked hash. A late-ack task is in both and counts once.
        holds = self.tracker.holds
        acked_running: Counter[str] = Counter()
        for task_id, queue in registry.tasks:
            if not holds(task_id):
                acked_running[queue] += 1
        served = registry.served

        stats: list[QueueStats] = []
        position = 0
        for name, width, done, back in zip(names, widths, completed, recovered, strict=True):
            waiting = 0
            stamps: list[float | None] = []
            for _ in range(width):
                length, tail = int(replies[position]), replies[position + 1]
                position += 2
                waiting += length
                if length:
                    stamps.append(published_at(tail))
            inflight, scheduled = unacked.get(name, (0, 0))
            # A queue is the integration's when one of its live workers consumes it, one of
            # them counted a completion there, or recovery put back messages a dead one held
            # there: only then are its counts real. Elsewhere
            # they are absent, never a false 0.
            integrated = name in served or done is not None or back is not None
            stats.append(
                QueueStats(
                    name=name,
                    waiting=waiting,
                    inflight=inflight + acked_running[name],
                    scheduled=scheduled,
                    oldest_age=oldest_age(stamps, waiting=waiting, now=now),
                    source=self.source,
                    completed=int(done or 0) if self.completions and integrated else None,
                    running=running.get(name, 0) if integrated else None,
                    recovered=int(back or 0) if self.completions and integrated else None,
                )
            )
        return stats

    def unacked_queues(self) -> set[str]:
        """Queues with unacknowledged or running work, or served by integration workers.

        Exported even if neither configured nor bound: work in progress is never hidden.
        """
        queues = set(self.last_registry.running_per_queue) | self.last_registry.served
        if self.tracker is not None:
            queues.update(entry.queue for entry in self.tracker.entries.values())
        return queues

    def discover(self) -> set[str]:
        """Queues bound in kombu's binding tables (``_kombu.binding.<exchange>`` sets).

        ``SCAN`` walks the whole keyspace, so this runs every ``discovery_interval``, not on
        every read; the same pass refreshes the routing table that attributes unacked
        messages published to named exchanges.
        """
        channel, client = self._ensure()
        prefix = channel.global_keyprefix
        table_prefix = prefix + channel.keyprefix_queue % ("",)
        tables = [
            key.decode() if isinstance(key, bytes) else key
            for key in client.scan_iter(match=_glob_escape(table_prefix) + "*", count=1000)
        ]
        if not tables:
            return set()
        with client.pipeline(transaction=False) as pipe:
            for table in tables:
                pipe.smembers(table)
            members = pipe.execute()
        found: set[str] = set()
        routes: dict[tuple[str, str], str] = {}
        for table, table_members in zip(tables, members, strict=True):
            exchange = table[len(table_prefix) :]
            for member in table_members:
                text = member.decode() if isinstance(member, bytes) else str(member)
                parts = text.split(channel.sep)
                if len(parts) != 3:
                    continue
                routing_key, _pattern, queue = parts
                if is_internal_queue(queue) or exchange.endswith(("pidbox", "celeryev")):
                    continue
                found.add(queue)
                routes.setdefault((exchange, routing_key), queue)
        self.routes = routes
        return found


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class KombuQueueReader:
    """Waiting messages through kombu's passive ``queue_declare``, for any transport."""

    def __init__(
        self,
        *,
        url: str,
        transport_options: Mapping[str, Any] | None = None,
        source: str = SOURCE_KOMBU,
    ) -> None:
        self.source = source
        self._url = url
        self._options = dict(transport_options or {})
        self._connection: Connection | None = None
        self._chan: Any = None

    def _channel(self) -> Any:
        if self._connection is None:
            self._connection = Connection(
                self._url,
                transport_options=self._options,
                connect_timeout=DEFAULT_SOCKET_TIMEOUT,
            )
            try:
                _refuse_fast(self._connection)
            except ConnectionRefusedError:
                self._connection = None
                raise
        if self._chan is None:
            self._chan = self._connection.channel()
        return self._chan

    def waiting(self, name: str) -> int:
        """Ready messages in ``name``; 0 for a queue that is not declared yet."""
        channel = self._channel()
        try:
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except Exception as error:
            assert self._connection is not None
            if not _is_not_found(error, self._connection):
                raise
            # A 404 closes the channel on AMQP (not the connection): open another next time.
            self._chan = None
            return 0

    def read(self, names: Sequence[str], *, now: float) -> list[QueueStats]:
        stats = []
        for name in names:
            waiting = self.waiting(name)
            stats.append(
                QueueStats(
                    name=name,
                    waiting=waiting,
                    inflight=None,
                    scheduled=None,
                    # No way to see a message's headers without taking it off the queue.
                    oldest_age=0.0 if waiting == 0 else None,
                    source=self.source,
                )
            )
        return stats

    def discover(self) -> set[str]:
        return set()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # Closing a broken connection may fail too.
                log.debug("closing the broker connection failed", exc_info=True)
        self._connection = self._chan = None


#: Ports a broker URL without one means, per kombu transport, for ``_refuse_fast``.
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "pyamqp": 5672, "amqps": 5671}


def _refuse_fast(connection: Connection) -> None:
    """Raise at once when the broker's port refuses connections.

    redis-py retries a refused connect with backoff (about 2 s) and kombu retries that
    (about 6 s in all); py-amqp's connect takes about 2 s to give up. Right for a producer,
    wrong for a reader that reads again in ``interval`` anyway. A refusal takes one syscall
    to see, so it is checked first; a broker that does not answer at all still meets the
    socket timeouts.
    """
    default = DEFAULT_PORTS.get(str(connection.transport_cls))
    if default is None or not connection.hostname:
        return  # a unix socket, Sentinel, another transport: kombu's own connect decides
    port = connection.port or default
    try:
        socket.create_connection(
            (connection.hostname, port), timeout=DEFAULT_SOCKET_TIMEOUT
        ).close()
    except ConnectionRefusedError as error:
        raise ConnectionRefusedError(
            error.errno, f"{connection.hostname}:{port} refused the connection"
        ) from None


def _is_not_found(error: Exception, connection: Connection) -> bool:
    channel_errors = tuple(connection.channel_errors)
    if not isinstance(error, channel_errors):
        return False
    code = getattr(error, "code", None) or getattr(error, "reply_code", None)
    return code in (404, "404") or "NOT_FOUND" in str(error)


class RabbitMQReader:
    """RabbitMQ through its management API when configured, else AMQP passive declares."""

    def __init__(
        self,
        *,
        url: str,
        management_url: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        self._vhost = _vhost_of(url)
        self._management_url = management_url.rstrip("/") if management_url else None
        self.source = SOURCE_RABBITMQ_MANAGEMENT if management_url else SOURCE_AMQP
        self._amqp = KombuQueueReader(
            url=url, transport_options=transport_options, source=SOURCE_AMQP
        )
        self._http: httpx.Client | None = None
        self._timeout = timeout

    def _client(self) -> httpx.Client:
        if self._http is None:
            assert self._management_url is not None
            parsed = urllib.parse.urlsplit(self._management_url)
            # Credentials may ride in the URL (http://user:pass@host:15672); httpx wants
            # them apart. RabbitMQ's own default is guest/guest on loopback.
            auth = (
                urllib.parse.unquote(parsed.username or "guest"),
                urllib.parse.unquote(parsed.password or "guest"),
            )
            netloc = parsed.hostname or "127.0.0.1"
            if parsed.port:
                netloc = f"{netloc}:{parsed.port}"
            base = f"{parsed.scheme}://{netloc}{parsed.path}"
            self._http = httpx.Client(base_url=base, auth=auth, timeout=self._timeout)
        return self._http

    def _management_queues(self) -> dict[str, Mapping[str, Any]]:
        vhost = urllib.parse.quote(self._vhost, safe="")
        response = self._client().get(
            f"/api/queues/{vhost}",
            params={
                "columns": "name,messages_ready,messages_unacknowledged,"
                "head_message_timestamp,message_stats.ack",
                "disable_stats": "false",
            },
        )
        response.raise_for_status()
        return {queue["name"]: queue for queue in response.json()}

    def read(self, names: Sequence[str], *, now: float) -> list[QueueStats]:
        if self._management_url is None:
            return self._amqp.read(names, now=now)
        known = self._management_queues()
        stats = []
        for name in names:
            queue = known.get(name, {})
            waiting = int(queue.get("messages_ready") or 0)
            inflight = int(queue.get("messages_unacknowledged") or 0)
            head = queue.get("head_message_timestamp")
            # RabbitMQ's head_message_timestamp is the oldest stamp of the ready head *and*
            # of the messages delivered but unacknowledged (running, prefetched, held by a
            # worker for their ETA): with any of those, the oldest waiting message's own
            # stamp is hidden behind theirs (an hour-long countdown would read an hour).
            # Its age is then unknown, so absent, never the held message's age.
            stamps = (
                [float(head)]
                if isinstance(head, int | float) and not isinstance(head, bool) and inflight == 0
                else []
            )
            stats.append(
                QueueStats(
                    name=name,
                    waiting=waiting,
                    inflight=inflight,
                    # The broker cannot tell an ETA-held message from a running one.
                    scheduled=None,
                    oldest_age=oldest_age(stamps, waiting=waiting, now=now),
                    source=self.source,
                    completed=acked(queue),
                )
            )
        return stats

    def discover(self) -> set[str]:
        if self._management_url is None:
            return set()
        return {name for name in self._management_queues() if not is_internal_queue(name)}

    def close(self) -> None:
        self._amqp.close()
        if self._http is not None:
            self._http.close()
            self._http = None


def acked(queue: Mapping[str, Any]) -> int:
    """A management API queue's cumulative acknowledgements (``message_stats.ack``).

    RabbitMQ omits ``message_stats`` for a queue that has seen no traffic and ``ack`` for
    one that has seen no acknowledgement, and a queue not declared yet is absent: all 0.
    """
    stats = queue.get("message_stats")
    value = stats.get("ack") if isinstance(stats, Mapping) else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _vhost_of(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    vhost = urllib.parse.unquote(path[1:]) if path.startswith("/") else ""
    return vhost or "/"


def reader_for(
    url: str,
    *,
    transport_options: Mapping[str, Any] | None = None,
    management_url: str | None = None,
) -> QueueReader:
    """The reader for a Celery broker URL (``redis://``, ``amqp://`` …)."""
    scheme = urllib.parse.urlsplit(url).scheme.split("+")[0]
    if scheme in ("redis", "rediss"):
        return RedisQueueReader(url=url, transport_options=transport_options)
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return RabbitMQReader(
            url=url, management_url=management_url, transport_options=transport_options
        )
    return KombuQueueReader(url=url, transport_options=transport_options)


def merge_names(*groups: Iterable[str]) -> list[str]:
    """Queue names from several sources, first-seen order, blanks and internals removed."""
    seen: dict[str, None] = {}
    for group in groups:
        for name in group:
            name = name.strip()
            if name and not is_internal_queue(name):
                seen.setdefault(name, None)
    return list(seen)


__all__ = [
    "KombuQueueReader",
    "QueueReader",
    "QueueStats",
    "RabbitMQReader",
    "RedisQueueReader",
    "merge_names",
    "reader_for",
]
