"""The API's token check is remembered per process, and forgotten when it must be."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tide.jobs.accounts import ensure_token
from tide.jobs.api.authentication import MAX_ENTRIES, TokenCache, cache

pytestmark = pytest.mark.django_db


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def token_queries(client: APIClient) -> tuple[int, int]:
    """(status, queries on the token table) of one authenticated read."""
    with CaptureQueriesContext(connection) as queries:
        status = client.get("/api/tasks/").status_code
    return status, sum('"authtoken_token"' in q["sql"] for q in queries.captured_queries)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache.clear()


def test_a_checked_token_is_not_looked_up_again() -> None:
    client = client_for(ensure_token("alice"))
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)


def test_cache_off_checks_every_request(settings: Any) -> None:
    settings.TIDE_TOKEN_CACHE_SECONDS = 0
    client = client_for(ensure_token("alice"))
    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 1)


def test_a_deleted_token_is_refused_at_once() -> None:
    key = ensure_token("alice")
    client = client_for(key)
    assert token_queries(client)[0] == 200
    Token.objects.filter(key=key).get().delete()
    assert client.get("/api/tasks/").status_code == 401


def test_a_deactivated_user_is_refused_at_once() -> None:
    client = client_for(ensure_token("alice"))
    assert token_queries(client)[0] == 200
    user = get_user_model().objects.get(username="alice")
    user.is_active = False
    user.save()
    assert client.get("/api/tasks/").status_code == 401


def test_a_refusal_is_not_remembered() -> None:
    key = "f" * 40
    client = client_for(key)
    assert client.get("/api/tasks/").status_code == 401
    user = get_user_model().objects.create(username="late")
    Token.objects.create(key=key, user=user)
    assert client.get("/api/tasks/").status_code == 200


def test_entries_expire_and_stay_bounded() -> None:
    now = [0.0]
    tokens = TokenCache(clock=lambda: now[0])
    user = get_user_model()(pk=1, username="u")
    tokens.put("k", user, "token")
    now[0] = 29.9
    assert tokens.get("k", ttl=30) == (user, "token")
    now[0] = 30.0
    assert tokens.get("k", ttl=30) is None
    for index in range(MAX_ENTRIES + 5):
        tokens.put(f"k{index}", user, "token")
    assert tokens.get("k0", ttl=30) is None
    assert tokens.get(f"k{MAX_ENTRIES + 4}", ttl=30) is not None
    tokens.forget(user_id=1)
    assert tokens.get(f"k{MAX_ENTRIES + 4}", ttl=30) is None
