"""The operator's API calls made through the official ``kubernetes`` client, for comparison.

``bench_operator.py --client official`` runs the operator with this in place of its own
``KubeApi`` transport, so the two can be measured on the same runs (CPU per reconcile, RSS
per pool). It is what "going through the official client" would mean for Tide: the typed
methods a team would call (``AppsV1Api.read_namespaced_deployment``, ``CoreV1Api
.list_namespaced_pod``, ``CustomObjectsApi.patch_namespaced_custom_object_status``, ...),
their model objects turned back into the dicts the operator works with
(``sanitize_for_serialization``), and, because the client is synchronous (urllib3), each
call in a thread pool sized like ``KubeApi``'s connection limit.

Only ``_send`` is replaced: retries, counting and error types stay ``KubeApi``'s, so the
difference measured is the transport and the models, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.rest import ApiException

from tide_operator.adapters.credentials import Credentials
from tide_operator.adapters.kube import (
    FIELD_MANAGER,
    MAX_CONNECTIONS,
    ApiError,
    Conflict,
    KubeApi,
    NotFound,
    Unreachable,
)

NS = r"/namespaces/(?P<ns>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(rf"^/apis/apps/v1{NS}/deployments/(?P<name>[^/]+)$"), "read_deployment"),
    ("POST", re.compile(rf"^/apis/apps/v1{NS}/deployments$"), "create_deployment"),
    ("PATCH", re.compile(rf"^/apis/apps/v1{NS}/deployments/(?P<name>[^/]+)/scale$"), "scale"),
    ("PATCH", re.compile(rf"^/apis/apps/v1{NS}/deployments/(?P<name>[^/]+)$"), "patch_deployment"),
    ("GET", re.compile(rf"^/api/v1{NS}/pods$"), "list_pods"),
    ("PATCH", re.compile(rf"^/api/v1{NS}/pods/(?P<name>[^/]+)$"), "patch_pod"),
    (
        "PATCH",
        re.compile(
            rf"^/apis/(?P<g>[^/]+)/(?P<v>[^/]+){NS}/(?P<plural>[^/]+)/(?P<name>[^/]+)/status$"
        ),
        "patch_custom_status",
    ),
    (
        "GET",
        re.compile(rf"^/apis/(?P<g>[^/]+)/(?P<v>[^/]+){NS}/(?P<plural>[^/]+)/(?P<name>[^/]+)$"),
        "get_custom",
    ),
]


class OfficialClientApi(KubeApi):
    """``KubeApi`` with its requests made by ``kubernetes.client`` in a thread pool."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        super().__init__(credentials, timeout=timeout)
        config = kubernetes.client.Configuration()
        config.host = credentials.server
        config.connection_pool_maxsize = MAX_CONNECTIONS
        header = credentials.current_authorization()
        if header:
            config.api_key["BearerToken"] = header
        self.client = kubernetes.client.ApiClient(config)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self._pool = ThreadPoolExecutor(MAX_CONNECTIONS, thread_name_prefix="kube")

    async def aclose(self) -> None:
        await super().aclose()
        self._pool.shutdown(wait=False)
        self.client.close()

    def _dict(self, model: Any) -> Any:
        return self.client.sanitize_for_serialization(model)

    def _call(
        self, method: str, path: str, params: Mapping[str, str], body: Any, content_type: str
    ) -> Callable[[], Any]:
        manager = {"field_manager": FIELD_MANAGER} if "fieldManager" in params else {}
        for verb, pattern, kind in ROUTES:
            found = pattern.match(path) if verb == method else None
            if found is None:
                continue
            g = found.groupdict()
            if kind == "read_deployment":
                return lambda: self._dict(self.apps.read_namespaced_deployment(g["name"], g["ns"]))
            if kind == "create_deployment":
                return lambda: self._dict(
                    self.apps.create_namespaced_deployment(g["ns"], body, **manager)
                )
            if kind == "scale":
                return lambda: self._dict(
                    self.apps.patch_namespaced_deployment_scale(
                        g["name"], g["ns"], body, _content_type=content_type, **manager
                    )
                )
            if kind == "patch_deployment":
                return lambda: self._dict(
                    self.apps.patch_namespaced_deployment(
                        g["name"], g["ns"], body, _content_type=content_type, **manager
                    )
                )
            if kind == "list_pods":
                selector = params.get("labelSelector")
                return lambda: self._dict(
                    self.core.list_namespaced_pod(g["ns"], label_selector=selector)
                )
            if kind == "patch_pod":
                return lambda: self._dict(
                    self.core.patch_namespaced_pod(
                        g["name"], g["ns"], body, _content_type=content_type, **manager
                    )
                )
            if kind == "patch_custom_status":
                return lambda: self.custom.patch_namespaced_custom_object_status(
                    g["g"],
                    g["v"],
                    g["ns"],
                    g["plural"],
                    g["name"],
                    body,
                    _content_type=content_type,
                    **manager,
                )
            if kind == "get_custom":
                return lambda: self.custom.get_namespaced_custom_object(
                    g["g"], g["v"], g["ns"], g["plural"], g["name"]
                )
        # Anything else (discovery): the client's generic call, JSON in and out.
        return lambda: self.client.call_api(
            path,
            method,
            query_params=list(params.items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

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
        call = self._call(method, path, dict(params or {}), body, content_type)
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except ApiException as exc:
            try:
                payload = json.loads(exc.body or "{}")
            except ValueError:
                payload = {}
            reason = str(payload.get("reason") or exc.reason)
            message = str(payload.get("message") or exc.body or "")[:200]
            if exc.status == 404:
                raise NotFound(404, reason, message) from exc
            if exc.status == 409:
                raise Conflict(409, reason, message) from exc
            raise ApiError(int(exc.status or 0), reason, message) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"{self.credentials.server} unreachable: {exc}") from exc
        return result if result is not None else {}
