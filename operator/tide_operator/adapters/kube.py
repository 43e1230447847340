"""A small asynchronous Kubernetes API client for the operator's own reads and writes.

kopf watches WorkerPools and runs one daemon per pool, but its API client is private
(``kopf._cogs``) and the kubernetes Python client is a large synchronous dependency for the
handful of calls the operator makes: get/create/patch a Deployment, patch its ``scale``
subresource, list and annotate pods, patch a WorkerPool's ``status``. This module makes
exactly those calls with ``httpx`` (already the project's HTTP client), authenticated by the
same credentials kopf logged in with (``Connection`` is built from ``kopf.ConnectionInfo``
in ``handlers.py``; this module does not import kopf).

Decisions worth knowing:

* every write carries ``fieldManager=tide-operator``, so ``kubectl get -o yaml
  --show-managed-fields`` tells whose write a field is;
* a 409 Conflict on a patch is retried with a short backoff (another writer won a race, a
  precondition failed); other errors raise ``ApiError`` with the server's reason and
  message, for the caller to report on the pool's status;
* a 401 calls the ``refresh`` callback once and retries, because service-account tokens
  are rotated on disk while the operator runs;
* requests are counted by verb (``counts``) for the benchmark's requests-per-minute;
* at most ``MAX_CONNECTIONS`` requests are in flight, the rest wait on a semaphore: httpcore
  rescans every queued request against every connection whenever one frees, so a thousand
  pools' requests queued inside its pool cost O(queued x connections) each (cProfile of the
  1,000-pool benchmark: most of the operator's CPU), where a semaphore wakes one waiter.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

__all__ = [
    "FIELD_MANAGER",
    "ApiError",
    "Conflict",
    "Connection",
    "KubeApi",
    "NotFound",
]

FIELD_MANAGER: Final = "tide-operator"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
CONFLICT_RETRIES: Final = 5
CONFLICT_BACKOFF: Final = 0.1
MAX_CONNECTIONS: Final = 50


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the API server is and how to authenticate (mirrors kopf.ConnectionInfo)."""

    server: str
    token: str | None = None
    insecure: bool = False
    ca_path: str | None = None
    ca_data: bytes | None = None
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    private_key_path: str | None = None
    private_key_data: bytes | None = None
    username: str | None = None
    password: str | None = None


class ApiError(Exception):
    """A non-success answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or the resource) does not exist."""


class Conflict(ApiError):
    """409: a conflicting write or an existing object, after the retries."""


def _write_temp(data: bytes) -> str:
    with tempfile.NamedTemporaryFile(delete=False, prefix="tide-kube-") as handle:
        handle.write(data)
        return handle.name


def _ssl_context(conn: Connection) -> ssl.SSLContext | bool:
    if conn.insecure:
        return False
    context = ssl.create_default_context()
    if conn.ca_path:
        context.load_verify_locations(cafile=conn.ca_path)
    if conn.ca_data:
        context.load_verify_locations(cadata=conn.ca_data.decode())
    cert = conn.certificate_path or (
        _write_temp(conn.certificate_data) if conn.certificate_data else None
    )
    key = conn.private_key_path or (
        _write_temp(conn.private_key_data) if conn.private_key_data else None
    )
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _headers(conn: Connection) -> dict[str, str]:
    return {"Authorization": f"Bearer {conn.token}"} if conn.token else {}


class KubeApi:
    """Thin JSON-over-HTTP calls; paths are API paths such as ``/apis/apps/v1/...``."""

    def __init__(
        self,
        connection: Connection,
        *,
        refresh: Callable[[], Awaitable[Connection]] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.connection = connection
        self.refresh = refresh
        self.timeout = timeout
        self.counts: Counter[str] = Counter()
        self._client = self._make_client(connection)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def _make_client(self, conn: Connection) -> httpx.AsyncClient:
        auth = (conn.username, conn.password) if conn.username and conn.password else None
        return httpx.AsyncClient(
            base_url=conn.server.rstrip("/"),
            verify=_ssl_context(conn),
            headers={"Accept": "application/json", **_headers(conn)},
            auth=auth,
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
        )

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
        for attempt in (1, 2):
            self.counts[method] += 1
            async with self._slots:
                response = await self._client.request(
                    method,
                    path,
                    params=params,
                    json=body,
                    headers={"Content-Type": content_type} if body is not None else None,
                )
            if response.status_code == 401 and attempt == 1 and self.refresh is not None:
                # A rotated token: log in again and retry once.
                self.connection = await self.refresh()
                old, self._client = self._client, self._make_client(self.connection)
                await old.aclose()
                continue
            break
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
