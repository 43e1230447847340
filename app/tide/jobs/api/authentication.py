"""Token authentication that remembers a checked token for a few seconds.

DRF's ``TokenAuthentication`` looks the token up on every request: a ``SELECT`` joining
the token and its user, compiled by the ORM each time. On the submit path that was the
largest single cost (about 1.9 ms of CPU of 4.7 ms per request, bench/bench_api.py), more
than publishing the task. This class asks DRF once per token and keeps the answer in the
process for ``TIDE_TOKEN_CACHE_SECONDS`` (default 30; 0 turns the cache off).

What a cached answer can miss, and for how long: a token deleted or a user deactivated
in *another* process stays accepted here for at most the cache lifetime. In this process
the change takes effect at once (the model signals below drop the entry), and failures
are never cached, so a new token works immediately.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

# Enough for every client of a deployment; the oldest entries go first beyond it.
MAX_ENTRIES = 10_000


class TokenCache:
    """Token key → (user, token, time checked), bounded and thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[Any, Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock

    def get(self, key: str, *, ttl: float) -> tuple[Any, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            user, token, checked = entry
            if self._clock() - checked >= ttl:
                del self._entries[key]
                return None
            return user, token

    def put(self, key: str, user: Any, token: Any) -> None:
        with self._lock:
            self._entries[key] = (user, token, self._clock())
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)

    def forget(self, *, key: str | None = None, user_id: Any = None) -> None:
        with self._lock:
            if key is not None:
                self._entries.pop(key, None)
            if user_id is not None:
                for stale in [k for k, (u, _, _) in self._entries.items() if u.pk == user_id]:
                    del self._entries[stale]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = TokenCache()


class CachedTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, checked against the database at most every
    ``TIDE_TOKEN_CACHE_SECONDS`` per process."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        ttl = float(getattr(settings, "TIDE_TOKEN_CACHE_SECONDS", 30))
        if ttl > 0 and (hit := cache.get(key, ttl=ttl)) is not None:
            return hit
        # Raises AuthenticationFailed for an unknown key or an inactive user: not cached.
        user, token = super().authenticate_credentials(key)
        if ttl > 0:
            cache.put(key, user, token)
        return user, token


def _token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    cache.forget(key=instance.key)


def _user_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Deactivated, made staff or not, deleted: the next request reads the user again.
    cache.forget(user_id=instance.pk)


def connect() -> None:
    """Drop entries when tokens or users change in this process (called from ``ready``)."""
    post_delete.connect(_token_changed, sender=Token, dispatch_uid="tide-token-cache-delete")
    post_save.connect(_token_changed, sender=Token, dispatch_uid="tide-token-cache-save")
    user_model = get_user_model()
    post_save.connect(_user_changed, sender=user_model, dispatch_uid="tide-user-cache-save")
    post_delete.connect(_user_changed, sender=user_model, dispatch_uid="tide-user-cache-delete")
