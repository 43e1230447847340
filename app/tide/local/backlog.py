"""What waits in a pool's queues, read without taking it: the task names at their heads.

Local mode runs a team's workers, and a Celery worker that receives a task its app does not
register logs "Received unregistered task … The message has been ignored and discarded"
and acknowledges it: the message is gone. So before workers start on a queue, local mode
looks at what waits there (``peek``) and compares it with what the app knows
(``tide.local.apps``). Looking must not take anything:

* Redis: ``LRANGE`` on each priority list of the queue (kombu's names for them, from its
  own channel: ``_q_for_pri``, ``priority_steps``, ``global_keyprefix``, so they follow the
  app's transport options), the oldest ``limit`` messages of each (kombu pushes on the left
  and pops on the right). The read changes nothing;
* RabbitMQ (AMQP): ``basic_get`` without ack, up to ``limit`` messages, then the channel is
  closed, which returns every unacknowledged message to the queue, at its place. A queue
  that does not exist yet holds nothing;
* any other transport: not read (``Backlog.readable`` is false), and the caller says so.

The task name is in the message's ``task`` header (Celery's message protocol 2), or in the
body for protocol 1.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection
from kombu.exceptions import ChannelError

log = logging.getLogger(__name__)

#: Messages looked at per queue (per priority list on Redis): enough to find a foreign
#: task among the first a worker would take, cheap for any queue.
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class Backlog:
    """Task name -> messages among the head of each queue; ``readable`` False: not looked at."""

    tasks: Mapping[str, Counter[str]] = field(default_factory=dict)
    readable: bool = True
    transport: str = ""

    def unknown(self, known: frozenset[str]) -> dict[str, Counter[str]]:
        """Per queue, the waiting tasks ``known`` does not have (only queues that have some)."""
        found: dict[str, Counter[str]] = {}
        for queue, counts in self.tasks.items():
            missing = Counter({name: n for name, n in counts.items() if name not in known})
            if missing:
                found[queue] = missing
        return found


def task_name(payload: Any) -> str | None:
    """The task a Celery message carries: protocol 2's header, else protocol 1's body."""
    if not isinstance(payload, Mapping):
        return None
    headers = payload.get("headers") or {}
    if isinstance(headers, Mapping) and headers.get("task"):
        return str(headers["task"])
    body = payload.get("body")
    if isinstance(body, str) and (payload.get("properties") or {}).get("body_encoding") == "base64":
        try:
            decoded = json.loads(base64.b64decode(body))
        except (ValueError, TypeError):
            return None
        if isinstance(decoded, Mapping) and decoded.get("task"):
            return str(decoded["task"])
    return None


def _peek_redis(channel: Any, queues: Sequence[str], limit: int) -> dict[str, Counter[str]]:
    import redis

    # A plain client over kombu's pool: kombu's prefixing client prefixes only the commands
    # kombu itself sends, so the prefix is added here, from the channel.
    client = redis.Redis(connection_pool=channel.pool)
    prefix = channel.global_keyprefix
    found: dict[str, Counter[str]] = {}
    for queue in queues:
        counts: Counter[str] = Counter()
        lists = dict.fromkeys(channel._q_for_pri(queue, pri) for pri in channel.priority_steps)
        for key in lists:
            for raw in client.lrange(prefix + key, -limit, -1):
                try:
                    name = task_name(json.loads(raw))
                except ValueError:
                    name = None
                counts[name or "<not a Celery task message>"] += 1
        found[queue] = counts
    return found


def _peek_amqp(
    connection: Connection, queues: Sequence[str], limit: int
) -> dict[str, Counter[str]]:
    found: dict[str, Counter[str]] = {}
    for queue in queues:
        counts: Counter[str] = Counter()
        channel = connection.channel()
        try:
            for _ in range(limit):
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                headers = (
                    getattr(message, "headers", None)
                    or (getattr(message, "properties", {}) or {}).get("application_headers")
                    or {}
                )
                name = headers.get("task") if isinstance(headers, Mapping) else None
                counts[str(name) if name else "<not a Celery task message>"] += 1
        except ChannelError:
            pass  # a queue nobody declared yet: nothing waits there
        finally:
            # Closing the channel returns every message it got and did not ack.
            try:
                channel.close()
            except Exception:  # a channel the broker closed (404) is closed already
                log.debug("closing the peek channel failed", exc_info=True)
        found[queue] = counts
    return found


def peek(
    broker_url: str,
    *,
    transport_options: Mapping[str, Any] | None,
    queues: Sequence[str],
    limit: int = DEFAULT_LIMIT,
) -> Backlog:
    """The task names at the head of each of ``queues``, nothing taken."""
    connection = Connection(broker_url, transport_options=dict(transport_options or {}))
    try:
        driver = connection.transport.driver_type
        if driver == "redis":
            tasks = _peek_redis(connection.default_channel, queues, limit)
        elif driver == "amqp":
            tasks = _peek_amqp(connection, queues, limit)
        else:
            return Backlog(readable=False, transport=driver)
        return Backlog(tasks=tasks, transport=driver)
    finally:
        connection.release()
