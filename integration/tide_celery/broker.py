"""Plain Redis commands on an app's broker, under its ``global_keyprefix``.

The integration writes a few keys of its own (``tide_celery.layout``) on the Redis the app
already uses as its broker, through the app's own broker connection pool (``app.pool``,
kombu's): no new connection settings, no new connection per task. kombu's prefixing client
knows only the commands kombu itself sends, so the prefix is added here, from the channel,
which holds the transport options the app was configured with.

One plain client wraps each kombu channel's connection pool; a fork (Celery's prefork
children) makes new pools, hence new clients. On any other transport (RabbitMQ, SQS …)
``run`` returns ``None`` and nothing is written: Tide reads those brokers' own figures.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

#: How long a call may wait for a free broker connection before it gives up.
ACQUIRE_TIMEOUT = 2.0


class BrokerRedis:
    """The Redis behind one Celery app's broker, or nothing when the broker is not Redis."""

    def __init__(self, app: Any) -> None:
        self.app = app
        #: ``None`` until the first call tells which transport the app uses.
        self.enabled: bool | None = None
        self._clients: Any = weakref.WeakKeyDictionary()
        #: kombu's name for the unacked hash and the visibility timeout, from the channel.
        self._unacked_key = "unacked"
        self._unacked_index_key = "unacked_index"
        self._visibility_timeout = 3600

    def unacked_key(self) -> str:
        """kombu's ``unacked`` hash (unprefixed), as the app's channel names it."""
        return self._unacked_key

    def unacked_index_key(self) -> str:
        """kombu's ``unacked_index`` sorted set (unprefixed): delivery tag -> delivered at."""
        return self._unacked_index_key

    def visibility_timeout(self) -> int:
        """The transport's visibility timeout in whole seconds (at least one)."""
        return max(1, int(self._visibility_timeout))

    def run(
        self, build: Callable[[Any, str], None], *, transaction: bool = False
    ) -> list[Any] | None:
        """``build(pipeline, prefix)`` queues commands; they run in one round trip
        (in one MULTI/EXEC with ``transaction``).

        Returns the replies, or ``None`` when the broker is not Redis.
        """
        if self.enabled is False:
            return None
        with self.app.pool.acquire(block=True, timeout=ACQUIRE_TIMEOUT) as connection:
            if self.enabled is None:
                # Redis and Sentinel transports; RabbitMQ and others keep their own figures.
                self.enabled = connection.transport.driver_type == "redis"
            if not self.enabled:
                return None
            channel = connection.default_channel
            self._unacked_key = str(getattr(channel, "unacked_key", self._unacked_key))
            self._unacked_index_key = str(
                getattr(channel, "unacked_index_key", self._unacked_index_key)
            )
            self._visibility_timeout = getattr(
                channel, "visibility_timeout", self._visibility_timeout
            )
            pool = channel.pool
            client = self._clients.get(pool)
            if client is None:
                import redis  # present wherever kombu's Redis transport runs

                client = self._clients[pool] = redis.Redis(connection_pool=pool)
            pipeline = client.pipeline(transaction=transaction)
            build(pipeline, channel.global_keyprefix)
            return list(pipeline.execute())
