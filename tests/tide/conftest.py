"""Fixtures for the Django project's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection

from tide.celery import app
from tide.exporter import queues


def _reset_connections() -> None:
    # Celery's producer pool comes from kombu's process-wide pool registry, keyed by
    # connection: reset that too, or the next publish finds a closed pool.
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    # The API's queue reader is kept per process, bound to the broker it was made for.
    queues._reader = None


@pytest.fixture
def broker_down() -> Iterator[None]:
    """Point the Celery app at a port where no broker listens, then restore it."""
    original = app.conf.broker_url
    _reset_connections()
    app.conf.broker_url = "redis://127.0.0.1:9/0"
    yield
    _reset_connections()
    app.conf.broker_url = original


@pytest.fixture
def broker_at() -> Iterator[Any]:
    """``broker_at(url)``: point this process's Celery app at ``url`` until the test ends."""
    original = app.conf.broker_url

    def point(url: str) -> None:
        _reset_connections()
        app.conf.broker_url = url

    yield point
    _reset_connections()
    app.conf.broker_url = original


@pytest.fixture(scope="session")
def test_db_name(django_db_setup: Any, django_db_blocker: Any) -> str:
    with django_db_blocker.unblock():
        return str(connection.settings_dict["NAME"])


@pytest.fixture(scope="session")
def worker_env(test_db_name: str) -> dict[str, str]:
    """Environment for processes the tests start (workers, ``tide up``): the test database,
    the same broker and the same key prefix as this process."""
    base = settings.DATABASES["default"]
    url = f"postgres://{base['USER']}@{base['HOST']}:{base['PORT']}/{test_db_name}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.test",
        "DATABASE_URL": url,
        "TIDE_TEST_RUN": os.environ["TIDE_TEST_RUN"],
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session", autouse=True)
def _clean_broker_keys() -> Iterator[None]:
    """Delete this run's keys (its unique prefix) from Redis when the session ends."""
    yield
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix")
    if not prefix or not settings.CELERY_BROKER_URL.startswith("redis"):
        return
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
