"""A process kubelet: a worker Deployment's pods as real local processes, on the API emulator.

The API emulator stores Deployments and pods but runs no controller and no node: a
Deployment the operator scales to 3 gets no pod, and its status never moves. To put the
operator, real Celery workers and jobs together without a cluster, ``ProcessKubelet`` plays,
for one Deployment, the three parts a cluster plays, writing through the API (as a cluster
admin, held to the real API's contract like every request the emulator serves) so that what
the operator reads is what a real cluster would show it:

* **the ReplicaSet controller**: pods to match ``spec.replicas``, named
  ``<deployment>-<hash>-<suffix>`` and labelled with the pod template's labels, owned by the
  Deployment (the operator reads no ReplicaSet, so none is made); on scale-in it picks the
  pods to delete as the ReplicaSet controller ranks them (``ActivePodsWithRanks``): not
  Ready first, then the lower ``controller.kubernetes.io/pod-deletion-cost``, then ready
  for less time, then the newer;
* **the kubelet**: each pod runs as a real process (``start``, given the pod's name; a
  Celery worker is named ``worker@<pod>`` as the chart names it, so the operator's busy
  probe and dead-worker recovery find it), is marked Running and Ready once its process
  says it is ready, and on deletion gets SIGTERM (Celery's warm shutdown, what scale-in
  sends) and goes once its process has exited: a finalizer of the kubelet's own holds the
  deleted pod meanwhile, so the pod shows its ``deletionTimestamp`` while the worker
  drains, as a real pod does until the kubelet's final delete. A process that exits on its
  own is started again in the same pod (``restartPolicy: Always``) and counted;
* **the Deployment controller's status**: ``replicas``, ``updatedReplicas``,
  ``readyReplicas``, ``availableReplicas`` and ``observedGeneration``.

It reads the Deployment from the emulator's store (it runs in the emulator's event loop,
so a read costs no request and never competes with the operator's), and records what it
saw for the bench and the tests: every ``spec.replicas`` value with its time, every pod
created and deleted with its time, every restart. Control is a loop every ``period``
seconds, as a controller's resync; nothing waits on a fixed sleep for an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kube_emulator import TideEmulator

from tide_operator.adapters.credentials import Credentials
from tide_operator.adapters.kube import ApiError, KubeApi

log = logging.getLogger("process-kubelet")

DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
#: Holds a deleted pod's object until its process has exited (the kubelet's final delete).
FINALIZER = "tide.dev/process-kubelet"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class Container(Protocol):
    """A pod's running process, as ``start`` returns it."""

    process: subprocess.Popen[bytes]

    def ready(self) -> bool:
        """Whether the process serves (a readiness probe's answer)."""
        ...


@dataclass
class Pod:
    name: str
    created: float
    container: Container
    ready_since: float | None = None
    deleting_since: float | None = None
    restarts: int = 0


@dataclass
class Record:
    """What the kubelet saw, on the wall clock (``time.time()``)."""

    replicas: list[tuple[float, int]] = field(default_factory=list)
    created: list[tuple[float, str]] = field(default_factory=list)
    deleted: list[tuple[float, str]] = field(default_factory=list)
    gone: list[tuple[float, str]] = field(default_factory=list)
    restarts: list[tuple[float, str]] = field(default_factory=list)

    def shrank(self) -> list[tuple[int, int]]:
        """Every step down of ``spec.replicas``: (from, to)."""
        sizes = [n for _, n in self.replicas]
        return [(a, b) for a, b in itertools.pairwise(sizes) if b < a]


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcessKubelet:
    """One Deployment's ReplicaSet controller, kubelet and status writer (module docstring)."""

    def __init__(
        self,
        emulator: TideEmulator,
        *,
        namespace: str,
        deployment: str,
        start: Callable[[str], Container],
        period: float = 0.2,
    ) -> None:
        self.emulator = emulator
        self.namespace = namespace
        self.deployment = deployment
        self.start = start
        self.period = period
        self.pods: dict[str, Pod] = {}
        self.record = Record()
        self._api = KubeApi(Credentials(str(emulator.url)))
        self._task: asyncio.Task[None] | None = None
        self._hash = secrets.token_hex(5)[:10]
        self._status: dict[str, Any] | None = None

    # -- life -----------------------------------------------------------------------------

    async def __aenter__(self) -> ProcessKubelet:
        self._task = asyncio.create_task(self._run(), name=f"process kubelet {self.deployment}")
        return self

    async def __aexit__(self, *_: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.stop_all()
        await self._api.aclose()

    async def stop_all(self, *, grace: float = 60) -> None:
        """Warm shutdown of every process (the node drained), killed after ``grace``."""
        for pod in self.pods.values():
            if pod.container.process.poll() is None:
                pod.container.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pod in self.pods.values():
            while pod.container.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if pod.container.process.poll() is None:
                pod.container.process.kill()
                pod.container.process.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except ApiError as error:  # a conflict with the operator's write: next round
                log.info("process kubelet: %s", error)
            except Exception:
                # A controller logs and goes on; a dead loop would stall the whole run.
                log.exception("process kubelet: round failed")
            await asyncio.sleep(self.period)

    # -- what the store holds -----------------------------------------------------------

    def _stored(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.emulator.objects[resource, self.namespace, name]
        except KeyError:
            return None
        if found.deleted:
            return None
        raw: dict[str, Any] = found.raw
        return raw

    def _deployment(self) -> dict[str, Any] | None:
        return self._stored(DEPLOYMENTS, self.deployment)

    def _pod_object(self, name: str) -> dict[str, Any] | None:
        return self._stored(PODS, name)

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    # -- one round ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        deployment = self._deployment()
        if deployment is None:
            return
        wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
        if not self.record.replicas or self.record.replicas[-1][1] != wanted:
            self.record.replicas.append((time.time(), wanted))
        await self._tend()
        live = [p for p in self.pods.values() if p.deleting_since is None]
        if len(live) < wanted:
            for _ in range(wanted - len(live)):
                await self._create(deployment)
        elif len(live) > wanted:
            for pod in self._victims(live, len(live) - wanted):
                await self._delete(pod)
        await self._write_status(deployment)

    async def _create(self, deployment: dict[str, Any]) -> None:
        template = (deployment.get("spec") or {}).get("template") or {}
        meta = template.get("metadata") or {}
        name = f"{self.deployment}-{self._hash}-{secrets.token_hex(3)[:5]}"
        uid = (deployment.get("metadata") or {}).get("uid")
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
                "finalizers": [FINALIZER],
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": self.deployment,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec") or {"containers": [{"name": "worker", "image": "x"}]},
        }
        await self._api.create(self._pods_path, body)
        now = time.time()
        self.pods[name] = Pod(name=name, created=now, container=self.start(name))
        self.record.created.append((now, name))
        log.info("process kubelet: pod %s started", name)

    async def _tend(self) -> None:
        """Readiness, restarts, and the final removal of pods whose process has exited."""
        for pod in list(self.pods.values()):
            process = pod.container.process
            if pod.deleting_since is not None:
                if process.poll() is not None:
                    await self._release(pod)
                continue
            if process.poll() is not None:
                # restartPolicy Always: the container starts again in the same pod.
                pod.restarts += 1
                pod.ready_since = None
                self.record.restarts.append((time.time(), pod.name))
                pod.container = self.start(pod.name)
                await self._pod_status(pod, ready=False)
                continue
            if pod.ready_since is None and pod.container.ready():
                pod.ready_since = time.time()
                await self._pod_status(pod, ready=True)
        # A pod deleted by someone else (a test, a user): its process is told to stop.
        for pod in list(self.pods.values()):
            if pod.deleting_since is None:
                found = self._pod_object(pod.name)
                if found is None or (found.get("metadata") or {}).get("deletionTimestamp"):
                    self._terminate(pod)

    def _victims(self, live: list[Pod], count: int) -> list[Pod]:
        def cost(pod: Pod) -> int:
            found = self._pod_object(pod.name) or {}
            annotations = (found.get("metadata") or {}).get("annotations") or {}
            try:
                return int(annotations.get(DELETION_COST, 0))
            except ValueError:
                return 0

        def rank(pod: Pod) -> tuple[int, int, float, float]:
            ready = pod.ready_since is not None
            # Not ready before ready; lower cost first; ready for less time (a later
            # ready_since) first; newer first.
            return (int(ready), cost(pod), -(pod.ready_since or 0.0), -pod.created)

        return sorted(live, key=rank)[:count]

    async def _delete(self, pod: Pod) -> None:
        with contextlib.suppress(ApiError):
            await self._api._send("DELETE", f"{self._pods_path}/{pod.name}")
        self._terminate(pod)

    def _terminate(self, pod: Pod) -> None:
        pod.deleting_since = time.time()
        self.record.deleted.append((pod.deleting_since, pod.name))
        if pod.container.process.poll() is None:
            pod.container.process.send_signal(signal.SIGTERM)
        log.info("process kubelet: pod %s terminating", pod.name)

    async def _release(self, pod: Pod) -> None:
        """The kubelet's final delete: the process has exited, the pod object goes."""
        if self._pod_object(pod.name) is not None:
            await self._api.patch(f"{self._pods_path}/{pod.name}", {"metadata": {"finalizers": []}})
            if self._pod_object(pod.name) is not None:
                # Not deleted yet (someone's finalizer remains, or nobody asked): ask now.
                with contextlib.suppress(ApiError):
                    await self._api._send("DELETE", f"{self._pods_path}/{pod.name}")
        del self.pods[pod.name]
        self.record.gone.append((time.time(), pod.name))

    async def _pod_status(self, pod: Pod, *, ready: bool) -> None:
        now = _stamp(time.time())
        status = "True" if ready else "False"
        body = {
            "status": {
                "phase": "Running",
                "startTime": _stamp(pod.created),
                "conditions": [
                    {"type": t, "status": status, "lastTransitionTime": now}
                    for t in ("Ready", "ContainersReady")
                ]
                + [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": [
                    {
                        "name": "worker",
                        "ready": ready,
                        "restartCount": pod.restarts,
                        "image": "tide",
                        "imageID": "",
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        }
        with contextlib.suppress(ApiError):
            await self._api.patch(f"{self._pods_path}/{pod.name}/status", body)

    async def _write_status(self, deployment: dict[str, Any]) -> None:
        live = [p for p in self.pods.values() if p.deleting_since is None]
        ready = sum(1 for p in live if p.ready_since is not None)
        status = {
            "observedGeneration": int((deployment.get("metadata") or {}).get("generation") or 1),
            "replicas": len(live),
            "updatedReplicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, len(live) - ready),
        }
        current = deployment.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}/status"
        await self._api.patch(path, {"status": status})
