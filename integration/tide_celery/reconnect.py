"""After a worker reconnects to Redis: the messages it dropped go back to their queues.

When the broker connection drops, Celery's consumer forgets every message it prefetched or
holds for an ETA, and every run it cut (``worker_cancel_long_running_tasks_on_connection_loss``):
*"they can't be acked anyway, as a delivery tag is specific to the current channel"*, so the
broker is to deliver them again. RabbitMQ does, when the old connection closes. kombu's
Redis transport puts a closing channel's unacknowledged messages back itself, but when the
connection dropped because Redis went away (a restart, a failover) that restore fails, and
the messages wait in the ``unacked`` hash for the visibility timeout (an hour with kombu's
defaults): measured with the stock app, a Redis restart left 6 of 8 held tasks there (early
and late acks), all 8 when the running ones were cut.

``RequeueHeld`` is a consumer step that ``tide_celery.install`` adds: it starts after every
(re)connection, before the event loop takes any message of the new connection, and puts
back, by kombu's restore path (``tide_celery.recovery.requeue_dropped``), every message
this run of the worker recorded as received (``tide_celery.holdings``) that is still
unacknowledged and whose task the worker no longer holds. A running late-ack task keeps its
message (it acknowledges it on the new connection). On the first start the record holds
nothing of this run; on other transports nothing is done.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class RequeueHeld(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: requeue what the last connection's messages left in ``unacked``."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        from tide_celery.integration import integration_for
        from tide_celery.recovery import requeue_dropped
        from tide_celery.workers import held_task_ids

        integration = integration_for(c.app)
        holdings = None if integration is None else integration.holdings
        connection = getattr(c, "connection", None)
        if holdings is None or connection is None:
            return
        if connection.transport.driver_type != "redis":
            return  # RabbitMQ requeued them when the old connection closed
        try:
            requeue_dropped(
                connection.default_channel,
                holdings.node,
                holdings.incarnation,
                keep=held_task_ids() or set(),
            )
        except Exception:
            # Left to the visibility timeout, as without this step; the consumer goes on.
            log.warning("could not requeue the messages of the lost connection", exc_info=True)
