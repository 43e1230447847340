"""kmock 0.8's Kubernetes emulator, corrected where kopf depends on real API behaviour.

Plain kmock 0.8 (pinned in pyproject.toml, because this leans on its internals) gets these
wrong for kopf, each seen on this machine (see /work/shared/TOOLING.md):

* objects get no ``resourceVersion``, ``uid``, ``creationTimestamp`` or ``generation``;
  kopf's finalizer JSON-patch carries a ``test`` on ``/metadata/resourceVersion``, which
  fails with a 500 where a real server answers 422, and kopf retries forever;
* a watch ignores ``?resourceVersion=``, replays every object as ADDED, and misses writes
  made between its snapshot and its subscription to the event bus;
* nothing collects garbage: a Deployment owned by a deleted WorkerPool would stay;
* it serves any path, verb and query parameter: ``timeoutSeconds=300.0``, which a real
  server refuses with a 400, passed here, and the operator crashed on every real cluster;
* it has no RBAC: an operator asking for more than its chart grants passed here too.

``TideEmulator`` first holds every request to the real API's contract (``kube_contract``:
the OpenAPI document of a real kube-apiserver v1.26) and, once ``authorize`` gave it the
chart's rules (``kube_rbac``), to RBAC for the operator's service account: a refused
request gets the real server's answer (400, 404, 405, 415, or 403 with the server's
message) and is recorded in ``violations`` or ``forbidden``, which the emulator fixture
asserts empty at teardown. Every request is logged (``log``: user, verb, resource,
namespace), so the suite can compare what the operator uses with what the chart grants. A
watch ends after its ``timeoutSeconds``, as on a real server.

It also stamps an increasing ``resourceVersion`` (and uid, creationTimestamp, generation)
on every write, answers a failed JSON-patch ``test`` with 422, subscribes a watch before
taking its snapshot and skips objects not newer than the requested version, lists with the
current version, and deletes dependents of a deleted owner (foreground details aside) like
the garbage collector. ``faults`` injects API errors (409s) for tests. A patch of a
Deployment's ``scale`` whose ``spec.replicas`` is not an int32 of at least 0 (``2.0``, which
Python's ``json`` writes for a float, ``"3"``, ``true``, ``-1``) gets the server's 422 and is
a violation: the server decodes a Scale's replicas into an int32 and validates them.

WorkerPools are admitted as kube-apiserver v1.26 with Tide's CRD (``build_crd``) admits
them, each step checked on a real server: a create or patch is pruned of fields the
structural schema does not know and defaulted (``crd_admission.decode``), then the object
it makes is validated by the schema and the CEL rules (``crd_admission.field_errors``): a
422 Invalid whose message and ``details.causes`` are the server's, and a violation. The
status subresource is the CRD's: a create drops the status, a write to the main resource
keeps the stored status, a write to ``/status`` keeps all but the status (spec and
metadata sent there are ignored), and the status is validated like the spec (the whole
object is, on every write, so a pool an older CRD admitted takes no write at all:
``crd_without`` creates one); ``generation`` grows only when the spec changes, and a write
that changes nothing stores no new version and streams no event. A PUT of a pool is not
served (kmock answers 404; nothing of Tide's replaces a pool).

Leases (``coordination.k8s.io/v1``, the operator's leader election) are served here rather
than by kmock, whose writes merge where a PUT replaces and which ignores preconditions:
create (201; 409 AlreadyExists), get (404 NotFound), replace (PUT: 409 Conflict when
``metadata.resourceVersion`` is not the current one, 422 when it is missing, 400 when the
name or namespace disagrees with the URL; a PUT to an absent Lease creates it, 201,
whatever resourceVersion it carries, as a Lease's update strategy allows create-on-update),
delete; bodies are held to the Lease's OpenAPI
schema (``kube_contract``: 400 for a field of the wrong type, a violation for an unknown
one) and to the server's validation (422 Invalid: a name that is not a DNS subdomain,
``leaseDurationSeconds`` not above 0, ``leaseTransitions`` below 0). Their traffic is
counted apart (``lease_reads``, ``lease_writes``): it is the operator's own bookkeeping,
the same at one pool as at a thousand, not a pool's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import functools
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from crd_admission import decode, field_errors
from kmock._internal import enums, rendering
from kube_contract import Address, Contract, Refusal, address, schema_errors
from kube_rbac import Grants

WORKERPOOLS = "tide.dev/v1alpha1/workerpools"
# The bearer token the operator logs in with in the tests; requests without it are the
# tests' own (a cluster admin's): logged, held to the contract, never to the chart's RBAC.
OPERATOR_TOKEN = "tide-operator-token"
ADMIN = "system:admin"
LEASE_PATH = re.compile(
    r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<namespace>[^/]+)/leases(?:/(?P<name>[^/]+))?$"
)
LEASE_KIND = "coordination.k8s.io/v1/Lease"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@functools.cache
def contract() -> Contract:
    """The API's contract with the WorkerPool resource's paths (loaded once per process)."""
    return Contract.load().with_custom_resource(
        group="tide.dev", version="v1alpha1", plural="workerpools", kind="WorkerPool"
    )


INT32 = range(-(2**31), 2**31)


def scale_refusal(name: str, patch: Any) -> Refusal | None:
    """kube-apiserver v1.26's answer to a patch of a Deployment's ``scale`` whose
    ``spec.replicas`` it cannot take: it decodes the patched Scale into Go (``int32``), so
    anything but an integer in range fails to decode, then validates it at least 0. Seen on
    a real server, which answers both with 422; the messages are its own (the decoding one
    without the Scale it quotes)."""
    if isinstance(patch, list):  # a JSON patch: the values it puts at /spec/replicas
        sent = [
            op["value"]
            for op in patch
            if isinstance(op, dict) and op.get("path") == "/spec/replicas" and "value" in op
        ]
    else:
        spec = patch.get("spec") if isinstance(patch, dict) else None
        sent = [spec["replicas"]] if isinstance(spec, dict) and "replicas" in spec else []
    for value in sent:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value not in INT32:
            if isinstance(value, bool):
                what = "bool"
            elif isinstance(value, int | float):
                what = f"number {json.dumps(value)}"
            else:
                what = {str: "string", list: "array", dict: "object"}.get(type(value), "value")
            return Refusal(
                422,
                "Invalid",
                f'"" is invalid: patch: Invalid value: "...": json: cannot unmarshal {what} '
                "into Go struct field ScaleSpec.spec.replicas of type int32",
            )
        if value < 0:
            return Refusal(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{value}: must be greater than or equal to 0",
            )
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the server applies ``application/merge-patch+json``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def pool_refusal(
    name: str, obj: dict[str, Any], *, lifted: frozenset[str] = frozenset()
) -> kmock.KubernetesError | None:
    """kube-apiserver v1.26's 422 for a WorkerPool its CRD refuses (schema, CEL rules, and
    the name every object's metadata must have), shaped as the server's Status. ``lifted``:
    rules (by message) the CRD did not have yet."""
    found = [error for error in field_errors(obj) if error.detail not in lifted]
    errors = [str(error) for error in found]
    causes = [
        {"reason": error.reason, "message": error.message, "field": error.field} for error in found
    ]
    if not name:
        errors.insert(0, "metadata.name: Required value: name or generateName is required")
        causes.insert(
            0,
            {
                "reason": "FieldValueRequired",
                "message": "Required value: name or generateName is required",
                "field": "metadata.name",
            },
        )
    elif len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        message = (
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
            "case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
        errors.insert(0, f"metadata.name: {message}")
        causes.insert(
            0, {"reason": "FieldValueInvalid", "message": message, "field": "metadata.name"}
        )
    if not errors:
        return None
    listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'WorkerPool.tide.dev "{name}" is invalid: {listed}',
        details={"name": name, "group": "tide.dev", "kind": "WorkerPool", "causes": causes},
    )


@attrs.frozen
class Logged:
    """One request as the server saw it: who, what, and whether it was refused (status)."""

    user: str
    method: str
    path: str
    address: Address | None
    refused: int | None = None
    # Which of several operator processes sent it: the token's suffix after OPERATOR_TOKEN
    # ("tide-operator-token.a" -> "a"), so tests with replicas tell their requests apart.
    client: str = ""


def _rv(raw: Any) -> int:
    try:
        return int((raw or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


@attrs.define(kw_only=True)
class TideEmulator(kmock.KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    # (method, path suffix) -> remaining count of 409 answers to give before succeeding.
    faults: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    # Every write that reached the emulator: (method, path), for the tests and the benchmark.
    writes: list[tuple[str, str]] = attrs.field(factory=list, init=False)
    reads: int = attrs.field(default=0, init=False)
    _in_flight: set[int] = attrs.field(factory=set, init=False)
    # Every request served, and every breach of the API's contract (a test fails on any).
    log: list[Logged] = attrs.field(factory=list, init=False)
    violations: list[str] = attrs.field(factory=list, init=False)
    # RBAC for the operator's token, once ``authorize`` is called; 403s answered under it.
    grants: Grants | None = attrs.field(default=None, init=False)
    forbidden: list[str] = attrs.field(factory=list, init=False)
    # Leases by (namespace, name), and their traffic: (method, path, holderIdentity sent).
    leases: dict[tuple[str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    lease_writes: list[tuple[str, str, str | None]] = attrs.field(factory=list, init=False)
    lease_reads: int = attrs.field(default=0, init=False)
    # CRD rules (by message) lifted while ``crd_without`` holds: creates admitted by an
    # older CRD that lacked them.
    _lifted: frozenset[str] = attrs.field(default=frozenset(), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.resources[WORKERPOOLS] = kmock.ResourceInfo(
            kind="WorkerPool",
            singular="workerpool",
            namespaced=True,
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            subresources={"status"},
            shortnames={"wp"},
        )

    @contextlib.contextmanager
    def crd_without(self, *rules: str) -> Iterator[None]:
        """WorkerPools created inside were admitted by an older CRD without these rules
        (named by their messages): the objects a real cluster keeps after its CRD was
        upgraded, for the server never validates a stored object again until it is written.
        Every later write to them (status, metadata) is judged by today's CRD, as there."""
        self._lifted = frozenset(rules)
        try:
            yield
        finally:
            self._lifted = frozenset()

    def authorize(self, grants: Grants) -> None:
        """Hold the operator's requests (``OPERATOR_TOKEN``) to these RBAC grants."""
        self.grants = grants

    def user(self, headers: Mapping[str, str]) -> str:
        if self.client(headers) is not None:
            return self.grants.user if self.grants is not None else "tide-operator"
        return ADMIN

    @staticmethod
    def client(headers: Mapping[str, str]) -> str | None:
        """The operator process's name (``OPERATOR_TOKEN`` or ``OPERATOR_TOKEN.<name>``)."""
        header = headers.get("Authorization") or ""
        token = header.removeprefix("Bearer ")
        if token == OPERATOR_TOKEN:
            return ""
        if token.startswith(f"{OPERATOR_TOKEN}."):
            return token.removeprefix(f"{OPERATOR_TOKEN}.")
        return None

    def operator_requests(self) -> list[Logged]:
        return [entry for entry in self.log if entry.user != ADMIN]

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Judged before kmock parses the request: kmock cannot even parse some paths a
        # real server serves (``/api/v1/namespaces`` raises in its path parser).
        refused = await self._judge(raw_request)
        if refused is not None:
            return refused
        lease = LEASE_PATH.match(raw_request.path)
        if lease is not None:
            return await self._serve_lease(raw_request, lease["namespace"], lease["name"])
        response: aiohttp.web.StreamResponse = await super().__call__(raw_request)
        return response

    def lease(self, namespace: str, name: str = "tide-operator") -> dict[str, Any] | None:
        return self.leases.get((namespace, name))

    async def _serve_lease(
        self, raw: aiohttp.web.BaseRequest, namespace: str, name: str | None
    ) -> aiohttp.web.StreamResponse:
        """A Lease request as kube-apiserver v1.26 serves it (see the module's docstring)."""

        def refuse(status: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
            return aiohttp.web.json_response(Refusal(status, reason, message).body(), status=status)

        def not_found(what: str) -> aiohttp.web.StreamResponse:
            return refuse(404, "NotFound", f'leases.coordination.k8s.io "{what}" not found')

        method = raw.method
        if method == "GET":
            self.lease_reads += 1
            if name is None:
                items = [v for (ns, _), v in sorted(self.leases.items()) if ns == namespace]
                return aiohttp.web.json_response(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "LeaseList",
                        "metadata": {"resourceVersion": str(self._last_version)},
                        "items": items,
                    }
                )
            found = self.leases.get((namespace, name))
            return not_found(name) if found is None else aiohttp.web.json_response(found)
        try:
            body = json.loads(await raw.read() or b"null")
        except ValueError:
            body = None
        spec = body.get("spec") if isinstance(body, dict) else None
        holder = spec.get("holderIdentity") if isinstance(spec, dict) else None
        self.lease_writes.append((method, raw.path, holder))
        if method == "DELETE":
            if name is None or (namespace, name) not in self.leases:
                return not_found(name or "")
            return aiohttp.web.json_response(self.leases.pop((namespace, name)))
        if not isinstance(body, dict):
            return refuse(400, "BadRequest", "the body of the request is not a Lease object")
        # The schema's decoding errors were refused by the contract (400) already.
        errors, _ = schema_errors(contract().schemas[LEASE_KIND], body, "")
        assert not errors, errors
        meta = body.get("metadata") or {}
        sent_name, sent_namespace = meta.get("name"), meta.get("namespace")
        if sent_namespace and sent_namespace != namespace:
            return refuse(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        invalid = self._lease_invalid(body)
        if method == "POST":
            if name is not None:
                return refuse(405, "MethodNotAllowed", "POST names no object")
            if not sent_name:
                invalid.insert(0, "metadata.name: Required value: name or generateName is required")
            if invalid:
                return self._invalid(sent_name or "", invalid)
            if (namespace, sent_name) in self.leases:
                return refuse(
                    409, "AlreadyExists", f'leases.coordination.k8s.io "{sent_name}" already exists'
                )
            stored = self._lease_stored(body, namespace, sent_name, previous=None)
            self.leases[(namespace, sent_name)] = stored
            return aiohttp.web.json_response(stored, status=201)
        if method != "PUT" or name is None:
            # A real server patches Leases too; nothing of Tide's does, so nothing here.
            self.violations.append(f"{method} {raw.path}: not served by the emulator")
            return refuse(405, "MethodNotAllowed", f"{method} of a Lease is not emulated")
        if sent_name != name:
            return refuse(
                400,
                "BadRequest",
                f"the name of the object ({sent_name}) does not match the name on the URL ({name})",
            )
        if invalid:
            return self._invalid(name, invalid)
        current = self.leases.get((namespace, name))
        if current is None:
            # Leases allow create-on-update: kube-apiserver v1.26 answers a PUT to an absent
            # Lease with 201, even one carrying a resourceVersion (seen on a real server).
            stored = self._lease_stored(body, namespace, name, previous=None)
            self.leases[(namespace, name)] = stored
            return aiohttp.web.json_response(stored, status=201)
        version = meta.get("resourceVersion")
        if not version:
            return refuse(
                422,
                "Invalid",
                f'leases.coordination.k8s.io "{name}" is invalid: metadata.resourceVersion: '
                "Invalid value: 0x0: must be specified for an update",
            )
        if version != current["metadata"]["resourceVersion"]:
            return refuse(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the '
                "object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        stored = self._lease_stored(body, namespace, name, previous=current)
        self.leases[(namespace, name)] = stored
        return aiohttp.web.json_response(stored)

    @staticmethod
    def _lease_invalid(body: Mapping[str, Any]) -> list[str]:
        """The server's validation of a Lease (``ValidateLease`` in v1.26)."""
        problems = []
        name = (body.get("metadata") or {}).get("name")
        if name and (len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name)):
            problems.append(
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                "consist of lower case alphanumeric characters, '-' or '.'"
            )
        spec = body.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and duration <= 0:
            problems.append(
                f"spec.leaseDurationSeconds: Invalid value: {duration}: must be greater than 0"
            )
        transitions = spec.get("leaseTransitions")
        if transitions is not None and transitions < 0:
            problems.append(
                f"spec.leaseTransitions: Invalid value: {transitions}: must be greater than or "
                "equal to 0"
            )
        return problems

    @staticmethod
    def _invalid(name: str, problems: list[str]) -> aiohttp.web.StreamResponse:
        message = f'Lease.coordination.k8s.io "{name}" is invalid: ' + ", ".join(problems)
        return aiohttp.web.json_response(Refusal(422, "Invalid", message).body(), status=422)

    def _lease_stored(
        self,
        body: Mapping[str, Any],
        namespace: str,
        name: str,
        *,
        previous: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The object as stored: the body sent, with the server's metadata (a PUT replaces
        the spec whole; uid and creationTimestamp stay)."""
        meta = dict(body.get("metadata") or {})
        before = (previous or {}).get("metadata") or {}
        meta.update(
            name=name,
            namespace=namespace,
            resourceVersion=self._next_version(),
            uid=before.get("uid") or str(uuid.uuid4()),
            creationTimestamp=before.get("creationTimestamp")
            or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        spec = {k: v for k, v in (body.get("spec") or {}).items() if v is not None}
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _judge(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse | None:
        """The real server's refusal of this request, if it would refuse it; logs it."""
        method, path, query = raw.method, raw.path, dict(raw.query)
        user = self.user(raw.headers)
        where = address(method, path, query)
        payload = await raw.read()
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            body = payload
        verdict = contract().check(
            method=method,
            path=path,
            query=query,
            content_type=raw.headers.get("Content-Type"),
            body=body,
        )
        self.violations += verdict.violations
        refusal = verdict.refusal
        if refusal is None and self.grants is not None and user != ADMIN and where is not None:
            allowed = self.grants.allows(
                group=where.group,
                resource=where.resource,
                verb=where.verb,
                namespace=where.namespace,
                name=where.name,
            )
            if not allowed:
                message = self.grants.forbidden_message(
                    group=where.group,
                    resource=where.resource,
                    verb=where.verb,
                    namespace=where.namespace,
                    name=where.name,
                )
                self.forbidden.append(message)
                refusal = Refusal(403, "Forbidden", message)
        self.log.append(
            Logged(
                user=user,
                method=method,
                path=path,
                address=where,
                refused=None if refusal is None else refusal.status,
                client=self.client(raw.headers) or "",
            )
        )
        if refusal is None:
            return None
        return aiohttp.web.json_response(refusal.body(), status=refusal.status)

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    def _key(self, request: rendering.Request) -> Any:
        return (request.resource, request.namespace, request.name)

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock keeps every request it served, and to pick a reaction it tests whether the
        # request is "in" each reaction's filtered view, which iterates the whole log through
        # the filters: each request costs more than the last (20 ms -> 135 ms over 2,000 GETs),
        # and even a log trimmed to 50 entries costs ~20 ms per request (cProfile: kmock's
        # filtering). Nothing here asserts on kmock's request log, so it holds only the
        # requests being served now, which are all the dispatch needs to find.
        self._in_flight.add(id(request))
        try:
            self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]
            return await self._dispatch(request)
        finally:
            self._in_flight.discard(id(request))

    async def _dispatch(self, request: rendering.Request) -> Any:
        if request.resource is None:
            return await super()._handle(request)
        method = str(request.method.value if request.method else "")
        path = request.url.path
        if request.action == enums.action.UPDATE and request.subresource == "scale":
            refusal = scale_refusal(request.name or "", request.data)
            if refusal is not None:
                self.violations.append(f"{method} {path}: {refusal.message}")
                raise kmock.KubernetesError(
                    status=refusal.status, reason=refusal.reason, message=refusal.message
                )
        if request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            self.writes.append((method, path))
            for (fault_method, suffix), remaining in list(self.faults.items()):
                if remaining > 0 and fault_method == method and path.endswith(suffix):
                    self.faults[(fault_method, suffix)] = remaining - 1
                    raise kmock.KubernetesError(
                        status=409, reason="Conflict", message="injected conflict"
                    )
        else:
            self.reads += 1

        if request.resource is not None and request.resource.plural == "workerpools":
            served = await self._admit_pool(request, method, path)
            if served is not None:
                return served

        owner_uid: str | None = None
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            data = copy.deepcopy(request.data)
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = self._next_version()
            if not meta.get("name") and meta.get("generateName"):
                # kopf's Events use generateName; without a name kmock keys them all as None.
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:8]}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            meta.setdefault("generation", 1)
            object.__setattr__(request, "data", data)  # frozen; kmock matches by identity
        elif request.action == enums.action.UPDATE and request.name is not None:
            key = self._key(request)
            current = self.objects._objects.get(key)
            if current is None or current.deleted:
                raise kmock.KubernetesObjectNotFoundError()
            raw = copy.deepcopy(current.raw)
            version = self._next_version()
            spec_changed = False
            if isinstance(request.data, list):
                try:
                    jsonpatch.apply_patch(raw, request.data, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid", message=f"patch failed: {exc}"
                    ) from exc
                spec_changed = any(
                    str(op.get("path", "")).startswith("/spec") for op in request.data
                )
                data: Any = [
                    *request.data,
                    {"op": "add", "path": "/metadata/resourceVersion", "value": version},
                ]
            else:
                data = copy.deepcopy(request.data or {})
                spec_changed = "spec" in data and request.subresource is None
                data.setdefault("metadata", {})["resourceVersion"] = version
            if spec_changed and request.subresource is None:
                generation = int(raw.get("metadata", {}).get("generation") or 1) + 1
                if isinstance(data, list):
                    data.append({"op": "add", "path": "/metadata/generation", "value": generation})
                else:
                    data["metadata"]["generation"] = generation
            object.__setattr__(request, "data", data)  # frozen; kmock matches by identity
        elif request.action == enums.action.DELETE and request.name is not None:
            key = self._key(request)
            current = self.objects._objects.get(key)
            meta = {} if current is None or current.deleted else current.raw.get("metadata", {})
            if meta.get("finalizers"):
                # Held by finalizers: the server only marks it, as a new version (kmock
                # marks it without one, and a watch from a later version never sees it).
                if not meta.get("deletionTimestamp"):
                    async with self._lock:
                        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                        current.patch(
                            {
                                "metadata": {
                                    "deletionTimestamp": stamp,
                                    "resourceVersion": self._next_version(),
                                }
                            }
                        )
                        await self._buses[request.resource].put(
                            {"type": "MODIFIED", "object": current.raw}
                        )
                return aiohttp.web.json_response(current.raw)
            if meta:
                owner_uid = meta.get("uid")

        try:
            return await super()._handle(request)
        finally:
            # Only a deletion can orphan a dependent; scanning every object after every
            # status patch made each write O(objects). An UPDATE deletes when it removes the
            # last finalizer of an object already marked for deletion.
            if request.action == enums.action.DELETE or (
                request.action == enums.action.UPDATE and self._is_gone(request)
            ):
                await self._collect_garbage()
            del owner_uid

    async def _admit_pool(self, request: rendering.Request, method: str, path: str) -> Any:
        """A WorkerPool write as kube-apiserver v1.26 with Tide's CRD takes it (each step
        seen on a real server): the body pruned of fields the schema does not know and
        defaulted; on a create, any status dropped; a write to the main resource keeps the
        stored status, a write to ``/status`` keeps everything but the status; the result
        validated by the schema and the CEL rules (422, a violation); ``generation`` bumped
        only when the spec changed; a write that changes nothing stores no new version.
        Returns the answer when it is served here, None to let the write go on (its
        ``request.data`` then replaces the whole object)."""
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            new = decode(copy.deepcopy(request.data))
            new.pop("status", None)
            name = str((new.get("metadata") or {}).get("name") or "")
            refusal = pool_refusal(name, new, lifted=self._lifted)
            if refusal is not None:
                self.violations.append(f"{method} {path}: {refusal.message}")
                raise refusal
            object.__setattr__(request, "data", new)  # frozen; kmock matches by identity
            return None
        if request.action != enums.action.UPDATE or request.name is None:
            return None
        current = self.objects._objects.get(self._key(request))
        if current is None or current.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        old = copy.deepcopy(current.raw)
        if isinstance(request.data, list):
            try:
                sent = jsonpatch.apply_patch(old, request.data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=f"patch failed: {exc}"
                ) from exc
        else:
            sent = merge_patch(old, request.data or {})
        new = decode(sent)
        if request.subresource == "status":
            # Only the status: spec and metadata sent to /status are ignored.
            status = new.get("status")
            new = copy.deepcopy(old)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        else:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        refusal = pool_refusal(request.name, new)
        if refusal is not None:
            self.violations.append(f"{method} {path}: {refusal.message}")
            raise refusal
        if new == old:
            return aiohttp.web.json_response(old)  # a no-op: no new version, no event
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = self._next_version()
        unchanged = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != unchanged:
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        # The whole object, replaced (the generic path below would merge it again).
        data = [{"op": "replace", "path": "", "value": new}]
        object.__setattr__(request, "data", data)  # frozen; kmock matches by identity
        response: Any = await super()._handle(request)
        if self._is_gone(request):
            await self._collect_garbage()
        return response

    def _is_gone(self, request: rendering.Request) -> bool:
        found = self.objects._objects.get(self._key(request))
        return found is None or found.deleted

    def _lookup(self, request: rendering.Request, *, name: str | None = None) -> Any:
        """The object a named request addresses, by its key (kmock scans all objects)."""
        key = (request.resource, request.namespace, request.name if name is None else name)
        return self.objects._objects.get(key)

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        found = self._lookup(request)
        if found is None or found.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return found.raw

    async def _serve_update(self, request: rendering.Request) -> Any:
        # Like kmock's: the last state seen, even if this very patch released the object.
        found = self._lookup(request)
        if found is None:
            raise kmock.KubernetesObjectNotFoundError()
        return found.last.raw

    async def _serve_create(self, request: rendering.Request) -> Any:
        # A create's URL names no object; the name is in the body (as kmock does).
        meta = request.data.get("metadata", {}) if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        found = self.objects._objects.get(key)
        if found is None:
            raise kmock.KubernetesObjectNotFoundError()
        return found.raw

    async def _collect_garbage(self) -> None:
        """Delete objects whose controlling owner no longer exists (the GC's job)."""
        async with self._lock:
            alive = {
                obj.raw.get("metadata", {}).get("uid")
                for obj in self.objects.values()
                if not obj.deleted
            }
            for (resource, _, _), obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                refs = obj.raw.get("metadata", {}).get("ownerReferences") or []
                owners = [r.get("uid") for r in refs if r.get("controller")]
                if owners and not any(uid in alive for uid in owners):
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = str(self._last_version)
        selector = request.params.get("labelSelector")
        if selector:
            wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
            result["items"] = [
                item
                for item in result["items"]
                if all(
                    (item.get("metadata", {}).get("labels") or {}).get(k) == v
                    for k, v in wanted.items()
                )
            ]
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        # Subscribe first, then snapshot: a write in between is streamed, not lost.
        marker = await bus.mark()
        stream: AsyncIterator[Any] | None = None
        try:
            try:
                since = int(request.params.get("resourceVersion") or 0)
            except ValueError:
                since = 0
            async with self._lock:
                snapshot = [
                    {"type": "ADDED", "object": obj.raw}
                    for (resource, namespace, _), obj in self.objects.items()
                    if resource == request.resource
                    and not obj.deleted
                    and (request.namespace is None or namespace == request.namespace)
                    and _rv(obj.raw) > since
                ]
            for event in snapshot:
                yield event
            # A real server ends a watch after its timeoutSeconds; the client reconnects
            # from the last resourceVersion it saw.
            timeout = request.params.get("timeoutSeconds")
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + int(timeout)
            stream = aiter(bus.stream(since=marker))
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                obj = event.get("object", {})
                namespace = obj.get("metadata", {}).get("namespace")
                if request.namespace is not None and namespace != request.namespace:
                    continue
                if event.get("type") != "DELETED" and _rv(obj) <= since:
                    continue
                yield event
        finally:
            if stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]
            await bus.unmark(marker)
