"""What the watches know of Deployments and pods, with the operator's own writes on top.

A pool's tick used to read its Deployment from the API server every ``pollingInterval``
(12 GETs a minute per pool at 5 s; 99 % of the Deployment reads a real API server served
for 20 pools), and its pods once a minute. The operator now learns both from watches, as
every controller-runtime operator and KEDA do from informers: kopf keeps two in-memory
indexes (``edge/handlers.py``: Deployments by namespace and name, pods by namespace, each
filled by kopf's watch of the resource), and ``Workloads`` answers the pools' reads from
them, so a tick at steady state makes no API request at all. kopf guarantees that its
indexes are filled from the initial listing before any other handler runs, so a pool never
reads an index that has not seen its Deployment yet.

Two things an index alone gets wrong, which this class corrects:

* **Read your own writes.** A watch event arrives some time after the write it reports
  (milliseconds, or seconds under load). Until the index has caught up with a write the
  operator made — it shows the written ``resourceVersion`` or a later one — the written
  object (or replica count) is what a read returns; otherwise the next tick would decide
  again from the old size and scale twice, posting two Events for one change. While the
  watch is down the overlay stays (a stale index must not undo the operator's own write);
  where versions cannot be compared it expires after ``WRITE_OVERLAY_SECONDS`` (a later
  write by someone else must not be hidden for long).
* **Deletions a re-listed watch never reports.** kopf re-lists a resource after its watch
  expired (410 Gone) and does not remove from its indexes the objects deleted meanwhile. A
  write answered 404 marks the object gone (``vanished``), and so does the pools' periodic
  check (``edge/handlers.py``: one LIST per namespace, shared by ``SharedLists``, then a GET
  of a Deployment the index holds and the LIST does not).

``resourceVersion`` is opaque in the API's contract; every API server stores etcd's
revision there, a decimal number, so two decimal versions are compared as numbers, and
anything else only for equality (then the overlay's expiry is what ends it).

Without a watch (``bind`` never called: local mode, a test of the adapters alone) the
caller reads the API server as before; ``watching`` tells it which.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "WRITE_OVERLAY_SECONDS",
    "Index",
    "SharedLists",
    "Workloads",
    "newer_or_same",
    "trim_deployment",
    "trim_pod",
]

#: Seconds the operator's own write stands in for a watch that has not reported it yet.
WRITE_OVERLAY_SECONDS: Final = 30.0
# Annotations worth keeping on a cached Deployment or pod (the rest can be large:
# kubectl's last-applied-configuration holds the whole object again).
_KEPT_ANNOTATION_PREFIXES: Final = ("tide.dev/", "deployment.kubernetes.io/")
DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"

Key = tuple[str, str]


#: A kopf index as read here: key -> the values of the objects indexed under it.
Index = Mapping[Any, Iterable[Any]]


def newer_or_same(seen: str | None, written: str | None) -> bool:
    """Whether an object at version ``seen`` includes the write that returned ``written``."""
    if not seen or not written:
        return False
    if seen.isdecimal() and written.isdecimal():
        return int(seen) >= int(written)
    return seen == written


def _comparable(seen: str | None, written: str | None) -> bool:
    return bool(seen and written and seen.isdecimal() and written.isdecimal())


def _kept_annotations(meta: Mapping[str, Any]) -> dict[str, str]:
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    return {
        k: v
        for k, v in annotations.items()
        if k.startswith(_KEPT_ANNOTATION_PREFIXES) or k == DELETION_COST
    }


def trim_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pool reads of a Deployment: no managed fields, only Tide's annotations.

    The pod template stays whole (an adopted Deployment's is checked for safe scale-in).
    """
    meta: Mapping[str, Any] = body.get("metadata") or {}
    kept_meta = {
        k: copy.deepcopy(meta[k])
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "labels",
            "ownerReferences",
            "deletionTimestamp",
        )
        if k in meta
    }
    kept_meta["annotations"] = _kept_annotations(meta)
    return {
        "metadata": kept_meta,
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def trim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pool reads of a pod: its name, labels, deletion cost, readiness, and whether
    it is terminating."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    status: Mapping[str, Any] = body.get("status") or {}
    ready = [
        {"type": "Ready", "status": c.get("status")}
        for c in status.get("conditions") or []
        if c.get("type") == "Ready"
    ]
    kept: dict[str, Any] = {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": _kept_annotations(meta),
        },
        "status": {"conditions": ready},
    }
    if meta.get("deletionTimestamp"):
        kept["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
    return kept


def _version(body: Mapping[str, Any] | None) -> str | None:
    if body is None:
        return None
    version = (body.get("metadata") or {}).get("resourceVersion")
    return None if version is None else str(version)


def _uid(body: Mapping[str, Any]) -> str | None:
    uid = (body.get("metadata") or {}).get("uid")
    return None if uid is None else str(uid)


def _latest(bodies: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest of several objects under one name (a deletion the watch missed, then a
    new object of that name): the highest version."""
    best: Mapping[str, Any] | None = None
    for body in bodies:
        if best is None or (
            newer_or_same(_version(body), _version(best)) and _version(body) != _version(best)
        ):
            best = body
    return best


@dataclass
class _Written:
    """The operator's last write to one Deployment, until the watch shows it."""

    version: str | None
    at: float
    #: The whole object as the write returned it (create, roll), if it did.
    body: Mapping[str, Any] | None = None
    #: The replica count a ``scale`` patch set, if that was the write.
    replicas: int | None = None


class Workloads:
    """Deployments and pods from kopf's indexes, the operator's own writes on top."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deployments: Index | None = None
        self._pods: Index | None = None
        self._written: dict[Key, _Written] = {}
        # Objects the index still holds but that are known to be gone (by uid).
        self._gone: set[str] = set()

    def bind(self, *, deployments: Index, pods: Index) -> None:
        """Read from these indexes from now on (kopf hands them to handlers)."""
        self._deployments, self._pods = deployments, pods

    @property
    def watching(self) -> bool:
        return self._deployments is not None and self._pods is not None

    # ------------------------------------------------------------------------ Deployments

    def _seen(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        assert self._deployments is not None
        found = self._deployments.get((namespace, name)) or ()
        return _latest(b for b in found if _uid(b) not in self._gone)

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as the watch or the operator's last write knows it; None if it
        does not exist. Only while ``watching``."""
        key = (namespace, name)
        seen = self._seen(namespace, name)
        written = self._written.get(key)
        if written is not None and (
            newer_or_same(_version(seen), written.version)
            or (
                not _comparable(_version(seen), written.version)
                and self._clock() - written.at > WRITE_OVERLAY_SECONDS
            )
        ):
            del self._written[key]
            written = None
        if written is None:
            return None if seen is None else copy.deepcopy(dict(seen))
        base = written.body if written.body is not None else seen
        if base is None:
            return None
        result = copy.deepcopy(dict(base))
        if written.replicas is not None:
            result.setdefault("spec", {})["replicas"] = written.replicas
        return result

    def wrote(self, body: Mapping[str, Any]) -> None:
        """The operator created or changed a Deployment; ``body`` is what the server returned."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        self._written[key] = _Written(version=_version(body), at=self._clock(), body=body)

    def scaled(self, namespace: str, name: str, replicas: int, *, version: str | None) -> None:
        """The operator set ``spec.replicas`` through the scale subresource; ``version`` is
        the Deployment's resourceVersion the server answered with."""
        key = (namespace, name)
        earlier = self._written.get(key)
        self._written[key] = _Written(
            version=version,
            at=self._clock(),
            body=earlier.body if earlier is not None else None,
            replicas=replicas,
        )

    def vanished(self, namespace: str, name: str) -> None:
        """A write to this Deployment was answered 404: it is gone, whatever the index says."""
        self._written.pop((namespace, name), None)
        assert self._deployments is not None
        for body in self._deployments.get((namespace, name)) or ():
            uid = _uid(body)
            if uid is not None:
                self._gone.add(uid)

    # ------------------------------------------------------------------------------ pods

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods of ``namespace`` whose labels match ``selector`` (as the watch saw them)."""
        assert self._pods is not None
        found = []
        for pod in self._pods.get(namespace) or ():
            labels: Mapping[str, str] = (pod.get("metadata") or {}).get("labels") or {}
            if _uid(pod) in self._gone:
                continue
            if all(labels.get(k) == v for k, v in selector.items()):
                found.append(copy.deepcopy(dict(pod)))
        return sorted(found, key=lambda p: str(p["metadata"].get("name")))


class SharedLists:
    """One LIST of a collection serves every pool that asks within ``max_age`` seconds.

    The pools' periodic checks for deletions a re-listed watch missed (``edge/handlers.py``)
    each need the names in their namespace; one LIST per namespace and resource serves them
    all, instead of a GET per pool. A failure is shared too, and raised to each reader.
    """

    def __init__(self, *, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._last: dict[str, tuple[float, asyncio.Future[dict[str, str]]]] = {}

    async def names(
        self, path: str, *, fetch: Callable[[], Awaitable[list[Any]]]
    ) -> dict[str, str]:
        """name -> uid of the objects ``path`` lists, fetched now or shared."""
        now = self._clock()
        found = self._last.get(path)
        if (
            found is None
            or not 0 <= now - found[0] <= self.max_age
            or (found[1].done() and found[1].exception() is not None)
        ):

            async def listing() -> dict[str, str]:
                items = await fetch()
                return {
                    str(i["metadata"]["name"]): str(i["metadata"].get("uid") or "")
                    for i in items
                    if (i.get("metadata") or {}).get("name")
                }

            future = asyncio.ensure_future(listing())
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            found = self._last[path] = (now, future)
        return await asyncio.shield(found[1])
