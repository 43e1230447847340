"""A small asynchronous Kubernetes API client for the operator's own reads and writes.

kopf watches WorkerPools and the operator runs one loop per pool, but its API client is private
(``kopf._cogs``) and the kubernetes Python client is a large synchronous dependency for the
handful of calls the operator makes: get/create/patch a Deployment, patch its ``scale``
subresource, list and annotate pods, patch a WorkerPool's ``status``. This module makes
exactly those calls with ``httpx`` (already the project's HTTP client), with the TLS context
and ``Authorization`` header of ``credentials.Credentials`` (resolved by the ``kubernetes``
package; kopf's own session is built from the same object in ``edge/handlers.py``).

Decisions worth knowing:

* every write carries ``fieldManager=tide-operator``, so ``kubectl get -o yaml
  --show-managed-fields`` tells whose write a field is;
* a 409 Conflict on a patch is retried with a short backoff (another writer won a race, a
  precondition failed); other errors raise ``ApiError`` with the server's reason and
  message, for the caller to report on the pool's status;
* a 401 asks the credentials for a fresh header once and retries (service-account tokens
  are rotated on disk while the operator runs; exec-plugin tokens expire);
* a request that never got an answer (connection refused, reset, timed out) raises
  ``Unreachable``, which is not an ``ApiError``: the server said nothing about the object,
  so callers must not report it as if it had (see the pool loop's outage handling);
* requests are counted by verb (``counts``) for the benchmark's requests-per-minute;
* at most ``MAX_CONNECTIONS`` requests are in flight, the rest wait on a semaphore: httpcore
  rescans every queued request against every connection whenever one frees, so a thousand
  pools' requests queued inside its pool cost O(queued x connections) each (cProfile of the
  1,000-pool benchmark: most of the operator's CPU), where a semaphore wakes one waiter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final

import httpx

from tide_operator.adapters.credentials import Credentials

__all__ = [
    "FIELD_MANAGER",
    "ApiError",
    "Conflict",
    "KubeApi",
    "NotFound",
    "Unreachable",
]

FIELD_MANAGER: Final = "tide-operator"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
CONFLICT_RETRIES: Final = 5
CONFLICT_BACKOFF: Final = 0.1
MAX_CONNECTIONS: Final = 50
TRANSIENT_STATUSES: Final = frozenset({401, 403, 429})


class ApiError(Exception):
    """A non-success answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """An answer that can clear by itself: 401/403 while a restarted API server's
        authenticator and RBAC caches sync, 429 throttling, 5xx (etcd, webhooks)."""
        return self.status in TRANSIENT_STATUSES or self.status >= 500


class NotFound(ApiError):
    """404: the object (or the resource) does not exist."""


class Conflict(ApiError):
    """409: a conflicting write or an existing object, after the retries."""


class Unreachable(Exception):
    """No answer from the API server: refused, reset, timed out. Says nothing of objects."""


class _Auth(httpx.Auth):
    """The credentials' current header on every request; one fresh try after a 401."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        header = await self.credentials.authorization()
        if header:
            request.headers["Authorization"] = header
        response = yield request
        if response.status_code == 401:
            # A rotated or expired token: ask the loader again (it re-reads the file or
            # re-runs the exec plugin) and retry once.
            fresh = await self.credentials.authorization(force=True)
            if fresh and fresh != header:
                request.headers["Authorization"] = fresh
                yield request


class KubeApi:
    """Thin JSON-over-HTTP calls; paths are API paths such as ``/apis/apps/v1/...``."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.counts: Counter[str] = Counter()
        self._client = httpx.AsyncClient(
            base_url=credentials.server,
            # A plain-HTTP server (the tests' emulator) needs no context; an https one with
            # no CA given in the kubeconfig is checked against the system's CAs.
            verify=credentials.ssl_context or True,
            proxy=credentials.proxy,
            auth=_Auth(credentials),
            headers={"Accept": "application/json"},
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
        )
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        self.counts[method] += 1
        try:
            async with self._slots:
                response = await self._client.request(
                    method,
                    path,
                    params=params,
                    json=body,
                    headers={"Content-Type": content_type} if body is not None else None,
                )
        except httpx.TransportError as exc:
            raise Unreachable(
                f"{self.credentials.server} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            reason = str(payload.get("reason") or response.reason_phrase)
            message = str(payload.get("message") or response.text[:200])
            if response.status_code == 404:
                raise NotFound(404, reason, message)
            if response.status_code == 409:
                raise Conflict(409, reason, message)
            raise ApiError(response.status_code, reason, message)
        return response.json() if response.content else {}

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        return await self._send("GET", path, params=params)

    async def list(self, path: str, *, label_selector: str | None = None) -> list[Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        payload = await self._send("GET", path, params=params)
        items: list[Any] = payload.get("items") or []
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self._send(
            "POST", path, params={"fieldManager": FIELD_MANAGER}, body=dict(body)
        )

    async def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH) -> Any:
        """PATCH, retrying 409 Conflict a few times before giving up."""
        delay = CONFLICT_BACKOFF
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                return await self._send(
                    "PATCH",
                    path,
                    params={"fieldManager": FIELD_MANAGER},
                    body=body,
                    content_type=content_type,
                )
            except Conflict:
                # Another writer won the race; the patch is idempotent, so try again.
                if attempt == CONFLICT_RETRIES:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover
