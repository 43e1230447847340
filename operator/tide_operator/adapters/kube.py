"""A small asynchronous Kubernetes API client for the operator's own reads and writes.

kopf watches WorkerPools and the operator runs one loop per pool, but kopf's API client is
private (``kopf._cogs``), and the handful of calls the operator makes — get/create/patch a
Deployment, patch its ``scale`` subresource, list and annotate pods, patch a WorkerPool's
``status``, read and write the operator's Lease — are made here, as JSON over HTTP on
``aiohttp`` (kopf's own transport, already in the process), with the TLS context and
``Authorization`` header of ``credentials.Credentials`` (resolved by the ``kubernetes``
package; kopf's session is built from the same object in ``edge/handlers.py``).

Why not the official client for the calls too, or httpx: measured at 1,000 pools
(``bench/bench_operator.py --client``, figures in docs/operator.md, "Design"), one GET of a
Deployment costs ~0.3 ms of CPU here, ~1.3 ms through the official client's typed methods
(synchronous: urllib3 in a thread pool, models built and turned back into dicts) and
~4.5 ms through httpx, whose connection pool rescans every queued request against every
connection. The official client stays what it is best at: logging in.

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
* at most ``MAX_CONNECTIONS`` connections; aiohttp's connector parks the other requests
  and wakes one per freed connection.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

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


class KubeApi:
    """Thin JSON-over-HTTP calls; paths are API paths such as ``/apis/apps/v1/...``."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.counts: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds a session to it).
        if self._session is None or self._session.closed:
            context = self.credentials.ssl_context
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS,
                    # A plain-HTTP server (the tests' emulator) needs no context; an https
                    # one with no CA in the kubeconfig is checked against the system's.
                    ssl=context if context is not None else True,
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json"},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        headers = {"Content-Type": content_type} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        header = await self.credentials.authorization()
        for attempt in (1, 2):
            if header:
                headers["Authorization"] = header
            try:
                async with self._client().request(
                    method,
                    self.credentials.server + path,
                    params=params,
                    data=data,
                    headers=headers,
                    proxy=self.credentials.proxy,
                ) as response:
                    status, reason_phrase = response.status, response.reason or ""
                    content = await response.read()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                raise Unreachable(
                    f"{self.credentials.server} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            if status == 401 and attempt == 1:
                # A rotated or expired token: ask the loader again (it re-reads the file or
                # re-runs the exec plugin) and retry once with what it gives.
                fresh = await self.credentials.authorization(force=True)
                if fresh and fresh != header:
                    header = fresh
                    continue
            break
        if status >= 400:
            try:
                payload = json.loads(content)
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {}
            reason = str(payload.get("reason") or reason_phrase)
            message = str(payload.get("message") or content[:200].decode(errors="replace"))
            if status == 404:
                raise NotFound(404, reason, message)
            if status == 409:
                raise Conflict(409, reason, message)
            raise ApiError(status, reason, message)
        return json.loads(content) if content else {}

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

    async def replace(self, path: str, body: Mapping[str, Any]) -> Any:
        """PUT: a conditional write when the body carries ``metadata.resourceVersion``
        (a 409 Conflict, raised at once, says the object changed since it was read)."""
        params = {"fieldManager": FIELD_MANAGER}
        return await self._send("PUT", path, params=params, body=dict(body))

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
