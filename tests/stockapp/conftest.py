"""Fixtures for the stock app's tests: a broker corner, its workers, its producer.

``stock_broker`` is Redis unless ``CELERY_BROKER_URL`` names RabbitMQ, which is how
``make test`` runs the ``broker``-marked tests a second time; ``redis_stock_broker`` is
always Redis (tests of Redis-only behaviour: key layouts, the integration's running
count). See ``stockapp_harness`` for the isolation each gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from stockapp_harness import (
    QUEUES,
    StockBroker,
    Workers,
    control,
    load_app,
    rabbitmq_broker,
    redis_broker,
)


def _reachable() -> None:
    try:
        control().ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not reachable for the stock app's control keys")


@pytest.fixture
def redis_stock_broker() -> Iterator[StockBroker]:
    _reachable()
    broker = redis_broker()
    yield broker
    broker.cleanup()


@pytest.fixture
def stock_broker() -> Iterator[StockBroker]:
    _reachable()
    url = os.environ.get("CELERY_BROKER_URL", "")
    broker = rabbitmq_broker() if url.startswith("amqp") else redis_broker()
    yield broker
    broker.cleanup()


@pytest.fixture
def stock_workers(tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(folder=tmp_path)
    yield workers
    workers.stop_all()


@pytest.fixture
def stock_producer() -> Iterator[Callable[..., Any]]:
    """``stock_producer(broker, acks_late=…, integration=…)``: the stock app as a producer."""
    apps: list[Any] = []

    def make(broker: StockBroker, *, acks_late: bool = False, integration: bool = True) -> Any:
        app = load_app(broker.env(acks_late=acks_late, integration=integration))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def stock_exporter() -> Iterator[Callable[..., Any]]:
    """``stock_exporter(broker)``: Tide's exporter reading the stock app's broker with the
    stock app's transport options (kombu's defaults), every 0.1 s, on a free port."""
    from tide.exporter.config import ExporterConfig
    from tide.exporter.server import start_exporter

    running: list[Any] = []

    def start(broker: StockBroker, **config: Any) -> Any:
        config.setdefault("queues", QUEUES)
        exporter = start_exporter(
            ExporterConfig(
                broker_url=broker.url,
                transport_options=broker.transport_options,
                management_url=broker.management_url,
                host="127.0.0.1",
                port=0,
                interval=0.1,
                discovery_interval=1.0,
                **config,
            )
        )
        running.append(exporter)
        return exporter

    yield start
    for exporter in running:
        exporter.stop()
