"""The Kubernetes API's contract as a real kube-apiserver v1.26 publishes it, for the emulator.

A real API server refuses requests that kmock serves happily: ``timeoutSeconds=300.0`` on a
watch is ``400 BadRequest: strconv.ParseInt: parsing "300.0": invalid syntax`` there, and
the operator died of it on every real cluster while the suite was green. So the emulator
holds every request to the server's own OpenAPI v2 document (``/openapi/v2`` of a real
kube-apiserver v1.26.0): the path exists (else 404), the verb is allowed there (else 405),
each query parameter is known and parses as its declared type (else 400 with the server's
own message), a patch comes in a media type the path accepts (else 415), and a body is of
the kind the path expects (else 400).

The full document (3 MB, ``../shared/kubernetes/openapi-v2-v1.26.0.json``) is not part of a
clone, so the repository carries ``kube-api-v1.26.json``: the paths of the resources Tide's
requests can touch (namespaces, pods, events, deployments with ``scale`` and ``status``,
CRDs, discovery), each verb with its typed query parameters, accepted patch media types and
body kind. ``extract()`` derives it from the document; run this file to regenerate it, and
a test checks that the copy equals the derivation whenever the document is beside the clone.
The document holds built-in groups only: a custom resource's paths (``tide.dev/v1alpha1
workerpools``) are derived from a built-in resource's, as the API server serves CRs with
the same parameters, minus strategic merge patch, which custom resources do not support.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
EXTRACT = HERE / "kube-api-v1.26.json"
DOCUMENT_NAME = "openapi-v2-v1.26.0.json"

# What Tide's requests (the operator's, kopf's, the tests' own) can touch: group/version ->
# resources, and the subresources kept. Everything else a real server serves is left out.
RESOURCES: dict[str, set[str]] = {
    "v1": {"namespaces", "pods", "events"},
    "apps/v1": {"deployments"},
    "events.k8s.io/v1": {"events"},
    "apiextensions.k8s.io/v1": {"customresourcedefinitions"},
    # The operator's Lease (adapters/leases.py).
    "coordination.k8s.io/v1": {"leases"},
}
# Kinds whose bodies are held to their OpenAPI schema field by field (the others by kind).
SCHEMAS = ("io.k8s.api.coordination.v1.Lease",)
# Definitions kept as plain objects rather than inlined (they are large and not ours).
OPAQUE = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
SUBRESOURCES = {"scale", "status"}
METHODS = ("get", "post", "put", "patch", "delete")
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


def shared_document() -> Path | None:
    """The team's full document beside the clone (or beside the main worktree), if any."""
    candidates = [REPO.parent / "shared" / "kubernetes" / DOCUMENT_NAME]
    git = REPO / ".git"
    if git.is_file():  # a linked worktree: ".git" says where the main repository is
        gitdir = Path(git.read_text().split("gitdir:", 1)[1].strip())
        candidates.append(gitdir.parents[2].parent / "shared" / "kubernetes" / DOCUMENT_NAME)
    return next((p for p in candidates if p.is_file()), None)


# ----------------------------------------------------------------------------- extraction


def _prefix(group_version: str) -> str:
    return "/api/v1" if group_version == "v1" else f"/apis/{group_version}"


def _wanted(path: str) -> bool:
    """Whether a document path belongs to a resource Tide's requests can touch."""
    if re.fullmatch(r"/(api/|api/v1/|apis/|apis/[^/]+/|apis/[^/]+/[^/]+/|version/)", path):
        return True  # discovery: kopf reads the documents of every group the server lists
    for group_version, plurals in RESOURCES.items():
        prefix = _prefix(group_version)
        pattern = (
            rf"^{re.escape(prefix)}(/watch)?(/namespaces/\{{namespace\}})?"
            rf"/(?P<plural>[a-z]+)(/\{{name\}}(/(?P<sub>[a-z]+))?)?$"
        )
        found = re.match(pattern, path)
        if found and found["plural"] in plurals and found["sub"] in (None, *SUBRESOURCES):
            return True
    return False


def _kind(document: Mapping[str, Any], schema: Mapping[str, Any] | None) -> str | None:
    ref = (schema or {}).get("$ref", "")
    definition = document["definitions"].get(ref.rsplit("/", 1)[-1], {})
    for gvk in definition.get("x-kubernetes-group-version-kind") or []:
        group_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
        return f"{group_version}/{gvk['kind']}"
    return None


def extract(document: Mapping[str, Any]) -> dict[str, Any]:
    """The compact contract of the paths in ``RESOURCES``, from the full document."""
    paths: dict[str, Any] = {}
    for path in sorted(p for p in document["paths"] if _wanted(p)):
        entry = document["paths"][path]
        shared = [p for p in entry.get("parameters", []) if p.get("in") == "query"]
        verbs: dict[str, Any] = {}
        for method in METHODS:
            operation = entry.get(method)
            if operation is None:
                continue
            params = shared + [p for p in operation.get("parameters", []) if p.get("in") == "query"]
            body = next((p for p in operation.get("parameters", []) if p.get("in") == "body"), None)
            spec: dict[str, Any] = {
                "action": operation.get("x-kubernetes-action"),
                "query": {p["name"]: p["type"] for p in sorted(params, key=lambda p: p["name"])},
            }
            if method == "patch":
                spec["consumes"] = list(operation.get("consumes") or [])
            kind = _kind(document, body["schema"]) if body and method in ("post", "put") else None
            if kind is not None:
                spec["body"] = kind
            verbs[method] = spec
        paths[path.rstrip("/") or "/"] = verbs
    schemas: dict[str, Any] = {}
    for name in SCHEMAS:
        definition = document["definitions"][name]
        kind = _kind(document, {"$ref": f"#/definitions/{name}"})
        assert kind is not None, name
        schemas[kind] = _compact(document, definition)
    return {
        "source": f"{DOCUMENT_NAME}: /openapi/v2 of kube-apiserver v1.26.0 (built-in groups)",
        "regenerate": "python tests/tide_operator/operator/kube_contract.py",
        "paths": paths,
        "schemas": schemas,
    }


def _compact(document: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref``s inlined (but ``OPAQUE``), descriptions dropped."""
    ref = schema.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        if name in OPAQUE:
            return {"type": "object"}
        return _compact(document, document["definitions"][name])
    out: dict[str, Any] = {k: schema[k] for k in ("type", "format") if k in schema}
    if "properties" in schema:
        out["properties"] = {
            key: _compact(document, value) for key, value in sorted(schema["properties"].items())
        }
    if "items" in schema:
        out["items"] = _compact(document, schema["items"])
    return out


def custom_resource_paths(
    paths: Mapping[str, Any],
    *,
    group: str,
    version: str,
    plural: str,
    kind: str,
    subresources: Iterable[str] = ("status",),
) -> dict[str, Any]:
    """A namespaced custom resource's paths, derived from apps/v1 deployments' paths."""
    like_prefix, like_plural, like_kind = "/apis/apps/v1", "deployments", "apps/v1/Deployment"
    prefix = f"/apis/{group}/{version}"
    derived: dict[str, Any] = {f"/apis/{group}": paths["/apis/apps"], prefix: paths[like_prefix]}
    for path, verbs in paths.items():
        found = re.match(
            rf"^{re.escape(like_prefix)}(?P<mid>(/watch)?(/namespaces/\{{namespace\}})?)"
            rf"/{like_plural}(?P<rest>(/\{{name\}})?)(/(?P<sub>[a-z]+))?$",
            path,
        )
        if not found or (found["sub"] and found["sub"] not in subresources):
            continue
        sub = f"/{found['sub']}" if found["sub"] else ""
        new_verbs: dict[str, Any] = {}
        for method, spec in verbs.items():
            spec = dict(spec)
            if "consumes" in spec:
                spec["consumes"] = [c for c in spec["consumes"] if c != STRATEGIC_MERGE]
            if spec.get("body") == like_kind:
                spec["body"] = f"{group}/{version}/{kind}"
            new_verbs[method] = spec
        derived[f"{prefix}{found['mid']}/{plural}{found['rest']}{sub}"] = new_verbs
    return derived


# ------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Refusal:
    """What a real server answers instead of serving the request."""

    status: int
    reason: str
    message: str

    def body(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": {},
            "code": self.status,
        }


@dataclass
class Verdict:
    """A refusal a real server would give (or None), and every breach of the contract."""

    refusal: Refusal | None = None
    violations: list[str] = field(default_factory=list)


def _parse_int(value: str) -> str | None:
    # Go's strconv.ParseInt(value, 10, 64), which the API server's query decoding uses.
    if re.fullmatch(r"[+-]?[0-9]+", value) and -(2**63) <= int(value) < 2**63:
        return None
    return f'strconv.ParseInt: parsing "{value}": invalid syntax'


# The values Go's strconv.ParseBool accepts. The API server itself reads any value but
# "false" and "0" as true, so anything else is served, but it is still a client bug.
_BOOLEANS = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_MICRO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def schema_errors(schema: Mapping[str, Any], value: Any, where: str) -> tuple[list[str], list[str]]:
    """(decoding errors, unknown fields) of ``value`` against a compact schema.

    A decoding error is what the API server's JSON decoder refuses with a 400 (a string
    where an int32 goes, a time it cannot parse); an unknown field is dropped with a
    warning (fieldValidation=Warn, v1.26's default), which is still a client bug here.
    """
    errors: list[str] = []
    unknown: list[str] = []
    kind = schema.get("type")
    if value is None:
        return errors, unknown  # null is the zero value for every field
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected an object, got {type(value).__name__}"], unknown
        properties = schema.get("properties")
        if properties is None:
            return errors, unknown
        for key, item in value.items():
            if key not in properties:
                unknown.append(f"{where}.{key}" if where else key)
                continue
            more, extra = schema_errors(properties[key], item, f"{where}.{key}" if where else key)
            errors += more
            unknown += extra
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {type(value).__name__}")
        elif schema.get("format") == "date-time" and not _MICRO_TIME.fullmatch(value):
            errors.append(f'{where}: parsing time "{value}" as RFC 3339: cannot parse')
    elif kind == "integer":
        low, high = _INT_RANGES.get(str(schema.get("format")), _INT_RANGES["int64"])
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected an integer, got {type(value).__name__}")
        elif not low <= value <= high:
            errors.append(f"{where}: {value} overflows {schema.get('format')}")
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"{where}: expected a boolean, got {type(value).__name__}")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array, got {type(value).__name__}"], unknown
        for index, item in enumerate(value):
            more, extra = schema_errors(schema.get("items") or {}, item, f"{where}[{index}]")
            errors += more
            unknown += extra
    return errors, unknown


class Contract:
    """Path templates with their verbs; ``check`` judges one request as the server would."""

    def __init__(self, paths: Mapping[str, Any], schemas: Mapping[str, Any] | None = None) -> None:
        self.paths = dict(paths)
        self.schemas = dict(schemas or {})
        self._patterns: list[tuple[int, re.Pattern[str], str]] = []
        for template in self.paths:
            regex = re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(template))
            literal = sum(1 for part in template.split("/") if part and "{" not in part)
            self._patterns.append((literal, re.compile(f"^{regex}$"), template))
        # Templates with more literal segments win (".../namespaces/{name}/status" loses
        # to ".../namespaces/{namespace}/pods" for ".../namespaces/x/pods").
        self._patterns.sort(key=lambda item: -item[0])

    @classmethod
    def load(cls) -> Contract:
        """The full document when it is beside the clone, else the carried extract."""
        document = shared_document()
        if document is not None:
            compact = extract(json.loads(document.read_text()))
        else:
            compact = json.loads(EXTRACT.read_text())
        return cls(compact["paths"], compact.get("schemas"))

    def with_custom_resource(self, **resource: Any) -> Contract:
        return Contract(
            {**self.paths, **custom_resource_paths(self.paths, **resource)}, self.schemas
        )

    def template(self, path: str) -> str | None:
        path = path.rstrip("/") or "/"
        for _, pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return None

    def check(
        self,
        *,
        method: str,
        path: str,
        query: Mapping[str, str],
        content_type: str | None,
        body: Any,
    ) -> Verdict:
        verdict = Verdict()
        template = self.template(path)
        if template is None:
            verdict.refusal = Refusal(
                404, "NotFound", "the server could not find the requested resource"
            )
            verdict.violations.append(f"{method} {path}: no such path in the API")
            return verdict
        spec = self.paths[template].get(method.lower())
        if spec is None:
            verdict.refusal = Refusal(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
            verdict.violations.append(f"{method} {path}: {method} is not allowed on {template}")
            return verdict
        known: Mapping[str, str] = spec["query"]
        for name, value in query.items():
            kind = known.get(name)
            if kind is None:
                # A real server ignores parameters it does not know: served, but a bug here.
                verdict.violations.append(
                    f"{method} {path}: unknown query parameter {name}={value!r}"
                )
            elif kind == "integer" and (error := _parse_int(value)) is not None:
                verdict.refusal = verdict.refusal or Refusal(400, "BadRequest", error)
                verdict.violations.append(f"{method} {path}: {name}: {error}")
            elif kind == "boolean" and value not in _BOOLEANS:
                verdict.violations.append(f"{method} {path}: {name}={value!r} is not a boolean")
        if verdict.refusal is not None:
            return verdict
        media = (content_type or "").split(";", 1)[0].strip()
        if "consumes" in spec and media not in spec["consumes"]:
            accepted = ", ".join(spec["consumes"])
            verdict.refusal = Refusal(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {accepted}",
            )
            verdict.violations.append(f"{method} {path}: patch media type {media!r} not accepted")
            return verdict
        expected = spec.get("body")
        if expected is not None and isinstance(body, dict):
            group_version, kind = expected.rsplit("/", 1)
            sent_version, sent_kind = body.get("apiVersion"), body.get("kind")
            if sent_version is not None and sent_version != group_version:
                message = (
                    f"the API version in the data ({sent_version}) does not match the expected "
                    f"API version ({group_version})"
                )
            elif sent_kind is not None and sent_kind != kind:
                message = (
                    f'{sent_kind} in version "{group_version.rsplit("/", 1)[-1]}" cannot be '
                    f"handled as a {kind}: the object provided is unrecognized"
                )
            else:
                message = ""
                schema = self.schemas.get(expected)
                if schema is not None:
                    errors, unknown = schema_errors(schema, body, "")
                    verdict.violations += [
                        f"{method} {path}: unknown field {name!r} (dropped by the server)"
                        for name in unknown
                    ]
                    if errors:
                        message = f'{kind} in version "{group_version.rsplit("/", 1)[-1]}" '
                        message += f"cannot be handled as a {kind}: " + "; ".join(errors)
            if message:
                verdict.refusal = Refusal(400, "BadRequest", message)
                verdict.violations.append(f"{method} {path}: {message}")
        elif expected is not None and body is not None and not isinstance(body, dict):
            verdict.refusal = Refusal(400, "BadRequest", f"the body is not a {expected} object")
            verdict.violations.append(f"{method} {path}: body is not an object")
        return verdict


def main(argv: list[str] | None = None) -> None:
    """Regenerate the carried extract from the full document (path given, or beside)."""
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else shared_document()
    if source is None:
        raise SystemExit(f"give the path of {DOCUMENT_NAME} (no ../shared/kubernetes here)")
    compact = extract(json.loads(source.read_text()))
    EXTRACT.write_text(json.dumps(compact, indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXTRACT} ({len(compact['paths'])} paths) from {source}")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------ addresses

_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?P<watch>/watch)?"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
    r"(?:/(?P<sub>[^/]+))?$"
)


@dataclass(frozen=True)
class Address:
    """What a resource request addresses, as RBAC sees it (non-resource URLs have none)."""

    group: str
    resource: str  # "deployments" or "deployments/scale"
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    namespace: str | None
    name: str | None


def address(method: str, path: str, query: Mapping[str, str]) -> Address | None:
    """The RBAC address of a request, or None for discovery and other non-resource URLs."""
    found = _RESOURCE_PATH.match(path.rstrip("/"))
    if found is None:
        return None
    namespace, plural, name, sub = found["namespace"], found["plural"], found["name"], found["sub"]
    if namespace is not None and name is None and plural in ("status", "finalize"):
        # /api/v1/namespaces/{name}/status: a subresource of the namespace itself.
        namespace, plural, name, sub = None, "namespaces", namespace, plural
    method = method.upper()
    watching = bool(found["watch"]) or query.get("watch") in ("true", "1")
    if method == "GET":
        verb = "watch" if watching else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return Address(
        group=found["group"] or "",
        resource=f"{plural}/{sub}" if sub else plural,
        verb=verb,
        namespace=namespace,
        name=name,
    )
