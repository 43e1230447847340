"""Reading what waits without taking it (``tide.local.backlog``), and the guard that keeps
workers off tasks their app would discard (``tide.local.guard``), on real brokers with the
stock app's messages. Marked ``broker``: Redis, then RabbitMQ (a virtual host of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockapp_harness import (
    STOCKAPP_PATH,
    StockBroker,
    connection,
    produce,
    rabbitmq_broker,
    redis_broker,
    stock_environment,
)

from tide.local.apps import AppError, read_app
from tide.local.backlog import peek, task_name
from tide.local.guard import UNKNOWN_TASKS, TaskGuard
from tide.local.pools import load_pools
from tide.local.workers import LocalWorkers
from tide_operator.adapters.targets import CeleryInspectProbe, TargetUnavailable

pytestmark = pytest.mark.broker

ORDER = "stockapp.tasks.place_order"
EMAIL = "stockapp.tasks.send_email"


@pytest.fixture
def broker() -> Iterator[StockBroker]:
    url = os.environ.get("CELERY_BROKER_URL", "")
    corner = rabbitmq_broker() if url.startswith("amqp") else redis_broker()
    yield corner
    corner.cleanup()


def waiting(broker: StockBroker, queue: str) -> int:
    """Messages in ``queue`` as the broker counts them (kombu sums Redis's priority lists)."""
    with connection(broker) as conn:
        channel = conn.channel()
        try:
            if broker.is_redis:
                # A passive declare asks EXISTS, which kombu leaves unprefixed: count instead.
                return int(channel._size(queue))
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        finally:
            channel.close()


def test_peek_names_the_waiting_tasks_and_takes_none(broker: StockBroker) -> None:
    produce(broker, [(ORDER, [n], {}) for n in range(4)])
    # Priority 5: on Redis a list of its own (emails\x06\x163), read too.
    produce(broker, [(EMAIL, [f"{n}@x"], {"priority": 5}) for n in range(2)])
    produce(broker, [(EMAIL, ["plain@x"], {})])

    backlog = peek(
        broker.url, transport_options=broker.transport_options, queues=["orders", "emails", "none"]
    )
    assert backlog.readable
    assert dict(backlog.tasks) == {
        "orders": Counter({ORDER: 4}),
        "emails": Counter({EMAIL: 3}),
        "none": Counter(),  # a queue nobody declared holds nothing
    }
    assert backlog.unknown(frozenset({ORDER})) == {"emails": Counter({EMAIL: 3})}
    # Reading took nothing.
    assert (waiting(broker, "orders"), waiting(broker, "emails")) == (4, 3)


def test_the_apps_own_tasks_pass_and_foreign_ones_are_found(
    broker: StockBroker, tmp_path: Path
) -> None:
    env = stock_environment(broker, **broker.env())
    stock = read_app("stockapp", env=env)
    assert {ORDER, EMAIL, "stockapp.tasks.hold"} <= stock.tasks
    assert stock.broker_url == broker.url
    assert dict(stock.transport_options) == broker.transport_options
    assert stock.queues == ("orders", "emails", "reports")

    produce(broker, [(ORDER, [1], {})])
    assert TaskGuard(pool="p", app=stock).check(["orders"]) is None

    # Tide's app reads the same broker: it knows none of the stock app's tasks.
    tide_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.test",
        "CELERY_BROKER_URL": broker.url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
    }
    tide_env.pop("CELERY_BROKER_KEYPREFIX", None)
    tide = read_app("tide", env=tide_env)
    assert "tide.samples.add" in tide.tasks
    assert ORDER not in tide.tasks
    finding = TaskGuard(pool="p", app=tide).check(["orders"])
    assert finding is not None
    assert dict(finding.unknown) == {"orders": Counter({ORDER: 1})}
    assert "the app 'tide' does not register" in finding.message()

    # Later, before a scale-up: the pool stays at zero, says why, and starts nothing.
    (tmp_path / "pools.yaml").write_text(
        "kind: WorkerPool\nmetadata: {name: p}\nspec: {queues: [orders], template: {}}\n"
    )
    (pool,) = load_pools(tmp_path / "pools.yaml")
    workers = LocalWorkers(
        pool=pool,
        env=tide_env,
        log_dir=tmp_path,
        guard=TaskGuard(pool="p", app=tide),
        probe=CeleryInspectProbe(broker.url, transport_options=broker.transport_options),
    )
    with pytest.raises(TargetUnavailable) as refused:
        asyncio.run(workers.scale(1, reason="a test"))
    assert refused.value.reason == UNKNOWN_TASKS
    assert workers.running == {}
    assert ORDER in workers.warning
    assert waiting(broker, "orders") == 1


def test_an_app_that_does_not_load_says_why(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(STOCKAPP_PATH)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with pytest.raises(AppError, match="could not load the Celery app 'nosuchapp'"):
        read_app("nosuchapp", env=env)


PROTOCOL = [
    # Celery's message protocol 2: the task in the headers.
    ({"headers": {"task": "a.b"}, "body": "W10="}, "a.b"),
    # Protocol 1: the task inside the base64 JSON body.
    (
        {"headers": {}, "body": "eyJ0YXNrIjogImMuZCJ9", "properties": {"body_encoding": "base64"}},
        "c.d",
    ),
    # Not a Celery message.
    ({"body": "x"}, None),
]


@pytest.mark.parametrize(("payload", "name"), PROTOCOL)
def test_task_name_of_each_protocol(payload: dict, name: str | None) -> None:
    assert task_name(payload) == name
