"""A stand-in kubelet for a control plane with no nodes: pods go Running and Ready, never run.

A control plane built without a kubelet (kube-apiserver, controller-manager, perhaps a
scheduler) creates Deployments, ReplicaSets and pods, but every pod stays ``Pending`` and
nothing ever removes a pod being deleted, so a Deployment never converges and a scale-in
never finishes. This process plays the node's part of the contract and nothing more:

* it registers one Node with room for many pods, keeps its ``Ready`` condition and its Lease
  in ``kube-node-lease`` fresh (the node lifecycle controller would otherwise taint it
  unreachable and evict everything);
* it binds a pod that is still unscheduled after ``--bind-after`` seconds to that Node
  (where a kube-scheduler runs, it binds first and this never happens);
* it marks each pod on the Node ``Running`` with every container ready (a status patch,
  as a kubelet writes it), so ReplicaSets count it available;
* it removes a pod being deleted (``metadata.deletionTimestamp``) at once, or after its
  grace period with ``--honour-grace``: the final delete with grace 0 a kubelet sends once
  the containers have stopped.

It never runs a container: there is nothing to pull, nothing to probe, no logs. It talks to
the API only through the ``kubernetes`` package with the kubeconfig it is given, watches pods
(re-listing when a watch expires) and never polls. Run it beside a cluster that has no
nodes: ``python tests/e2e/standin_kubelet.py --kubeconfig /path/admin.kubeconfig``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("standin-kubelet")

NODE_NAME = "tide-e2e-standin"
LEASE_NAMESPACE = "kube-node-lease"
#: Seconds between heartbeats; the node lifecycle controller's grace period is 40 s.
HEARTBEAT = 10.0


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class StandinKubelet:
    """One Node's worth of kubelet behaviour, driven by a pod watch."""

    def __init__(
        self, api: client.ApiClient, *, node: str, bind_after: float, honour_grace: bool
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.bind_after = bind_after
        self.honour_grace = honour_grace
        self.stopping = threading.Event()
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        self._pod_ip = 0

    # -- the Node and its heartbeat --------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        stamp = rfc3339(now())
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {
                "kubeletVersion": "v1.26.5-standin",
                "kubeProxyVersion": "v1.26.5-standin",
                "containerRuntimeVersion": "standin://0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "stand-in kubelet (runs no containers)",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "stand-in kubelet is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ]
            + [
                {
                    "type": kind,
                    "status": "False",
                    "reason": f"KubeletHas{reason}",
                    "message": "stand-in kubelet",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for kind, reason in (
                    ("MemoryPressure", "SufficientMemory"),
                    ("DiskPressure", "NoDiskPressure"),
                    ("PIDPressure", "SufficientPID"),
                )
            ],
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "tide.dev/standin-kubelet": "true",
                },
            },
        }
        try:
            self.core.create_node(body)
            log.info("registered node %s", self.node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        self.core.patch_node_status(self.node, {"status": self.node_status()})
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": 40,
            "renewTime": now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        try:
            self.coordination.patch_namespaced_lease(self.node, LEASE_NAMESPACE, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease(
                LEASE_NAMESPACE,
                {"metadata": {"name": self.node, "namespace": LEASE_NAMESPACE}, "spec": spec},
            )

    def heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT):
            try:
                self.heartbeat()
            except Exception:
                log.exception("heartbeat failed")

    # -- pods ------------------------------------------------------------------------------

    def handle(self, pod: client.V1Pod) -> None:
        meta, spec = pod.metadata, pod.spec
        key = f"{meta.namespace}/{meta.name}"
        if meta.deletion_timestamp is not None:
            if spec.node_name == self.node or not spec.node_name:
                self.schedule_removal(pod, key)
            return
        if not spec.node_name:
            self.schedule(key, self.bind_after, lambda: self.bind(meta.namespace, meta.name))
            return
        if spec.node_name != self.node:
            return
        phase = pod.status.phase if pod.status else None
        if phase == "Pending" or not self.ready(pod):
            self.start(pod)

    @staticmethod
    def ready(pod: client.V1Pod) -> bool:
        conditions = (pod.status.conditions if pod.status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    def schedule(self, key: str, delay: float, action: Any) -> None:
        """Run ``action`` after ``delay`` unless something is already due for this pod."""
        with self._lock:
            if key in self._timers:
                return
            timer = threading.Timer(delay, self._run, args=(key, action))
            timer.daemon = True
            self._timers[key] = timer
            timer.start()

    def _run(self, key: str, action: Any) -> None:
        with self._lock:
            self._timers.pop(key, None)
        try:
            action()
        except ApiException as exc:
            # 404: the pod went away meanwhile; 409: someone (a scheduler) bound it first.
            if exc.status not in (404, 409):
                log.warning("%s: %s %s", key, exc.status, exc.body)
        except Exception:
            log.exception("%s: action failed", key)

    def bind(self, namespace: str, name: str) -> None:
        pod = self.core.read_namespaced_pod(name, namespace)
        if pod.spec.node_name or pod.metadata.deletion_timestamp is not None:
            return
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node),
        )
        # The generated client cannot parse the Status a binding returns; the bind is done.
        self.core.create_namespaced_binding(namespace, body, _preload_content=False)
        log.info("bound %s/%s to %s", namespace, name, self.node)

    def start(self, pod: client.V1Pod) -> None:
        stamp = rfc3339(now())
        with self._lock:
            self._pod_ip += 1
            ip = f"10.244.{(self._pod_ip // 250) % 250}.{self._pod_ip % 250 + 1}"
        containers = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": f"standin://{c.image}",
                "containerID": f"standin://{pod.metadata.uid}/{c.name}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}},
            }
            for c in pod.spec.containers
        ]
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": stamp}
            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": stamp,
            "conditions": conditions,
            "containerStatuses": containers,
            "qosClass": (pod.status.qos_class if pod.status else None) or "BestEffort",
        }
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, pod.metadata.namespace, {"status": status}
        )
        log.info("started %s/%s (%s)", pod.metadata.namespace, pod.metadata.name, ip)

    def schedule_removal(self, pod: client.V1Pod, key: str) -> None:
        delay = 0.0
        if self.honour_grace and pod.spec.node_name:
            # The time left of the grace period the deletion set, as a kubelet would wait
            # for the containers to stop.
            left = (pod.metadata.deletion_timestamp - now()).total_seconds()
            delay = max(0.0, left)
        uid = pod.metadata.uid
        self.schedule(
            f"{key}/delete",
            delay,
            lambda: self.remove(pod.metadata.namespace, pod.metadata.name, uid),
        )

    def remove(self, namespace: str, name: str, uid: str) -> None:
        # The uid precondition makes sure a same-named successor is never removed.
        self.core.delete_namespaced_pod(
            name,
            namespace,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
            ),
        )
        log.info("removed %s/%s", namespace, name)

    def watch_pods(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces()
                for pod in listing.items:
                    self.handle(pod)
                version = listing.metadata.resource_version
                stream = watch.Watch()
                for event in stream.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=120,
                    allow_watch_bookmarks=True,
                ):
                    if self.stopping.is_set():
                        stream.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.handle(event["object"])
            except ApiException as exc:
                # 410 Gone: the watch's version expired; list again.
                if exc.status != 410:
                    log.warning("pod watch: %s %s", exc.status, exc.reason)
                    self.stopping.wait(1.0)
            except Exception:
                log.exception("pod watch failed")
                self.stopping.wait(1.0)

    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeats, name="heartbeat", daemon=True).start()
        log.info("stand-in kubelet for node %s watching pods", self.node)
        self.watch_pods()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, ~/.kube")
    parser.add_argument("--node", default=NODE_NAME)
    parser.add_argument(
        "--bind-after",
        type=float,
        default=2.0,
        help="bind a pod still unscheduled after this many seconds (a scheduler binds first)",
    )
    parser.add_argument(
        "--honour-grace",
        action="store_true",
        help="remove a deleted pod when its grace period ends, not at once",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kubelet = StandinKubelet(
        config.new_client_from_config(config_file=args.kubeconfig),
        node=args.node,
        bind_after=args.bind_after,
        honour_grace=args.honour_grace,
    )

    def stop(signum: int, _frame: object) -> None:
        kubelet.stopping.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    kubelet.run()


if __name__ == "__main__":
    main()
