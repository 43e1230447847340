"""Benchmark: 100 WorkerPools and two operator replicas on a real cluster; the acting one killed.

Run ``KUBECONFIG=/path/admin.kubeconfig TIDE_E2E_AUDIT_LOG=/path/audit.log
.venv/bin/python bench/bench_e2e_failover.py`` (``--pools 20`` for a quick run) against the
cluster ``make e2e`` takes (docs/operator.md, "End-to-end on a real cluster"), with the API
server's audit log (JSON lines, Metadata level or more): the server's own record is what
counts the requests. It builds the suite's scenario with the suite's harness
(``tests/e2e/e2e_harness.py``): a ``restricted`` namespace, the chart (its operator Deployment
scaled to 0), a kubeconfig with a token of the chart's operator ServiceAccount, a real
``tide exporter`` on a Redis keyspace of the run's own, the stand-in kubelet where the
cluster has no node; then ``--pools`` copies of the owned example pool (``minReplicas`` 1,
one pod each) and two local operator processes, ``replica-a`` (started first, so it takes
the Lease) and ``replica-b``, each ``tide operator -n <namespace>`` with its own ``POD_ID``.

It measures:

* idle steady state over ``--idle`` seconds, once every pool is Ready, its pod ready, its
  first scale-down window past, and the operators wrote nothing but the Lease for 15 s
  (the seconds from the first replica's start to then are a figure too): the operators'
  requests per pool per minute (both replicas: they share the ServiceAccount), the
  Lease's requests per minute, writes per minute;
* the failover: SIGKILL of the Lease's holder, then the seconds until the Lease names the
  other replica (polled every 0.1 s) and until every pool's ``status.actingReplica`` does,
  the survivor's ``tide_operator_acting`` series;
* what was written in ``--after`` seconds after the kill, by the audit log: scale patches,
  Deployment writes, Events, status patches, Lease writes, and whether any Deployment's
  ``spec.replicas`` moved (nothing changed in the queues, so any scale is spurious).

Figures go to stdout and ``bench/results/e2e-failover.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_harness import (  # noqa: E402
    GROUP,
    OPERATOR_SA,
    PLURAL,
    QUEUES,
    VERSION,
    Broker,
    Cluster,
    Exporter,
    Operator,
    create_namespace,
    delete_namespace,
    free_port,
    install_chart,
    load_examples,
    measure,
    needs_standin_kubelet,
    start_standin_kubelet,
    token_kubeconfig,
)
from test_e2e_cluster import audit_entries, describe_requests, is_lease  # noqa: E402

OUT = ROOT / "bench" / "results" / "e2e-failover.json"
LEASE = "tide-operator"
REPLICAS = ("replica-a", "replica-b")
#: The default scale-down window every pool starts with (seeded with its current size).
WINDOW = 30.0
POLL = 5.0
WRITES = ("create", "update", "patch", "delete", "deletecollection")
#: Seconds without a write (but the Lease's) before the idle window starts.
QUIET = 15.0


def now_utc() -> datetime:
    return datetime.now(UTC)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pools_of(count: int, *, namespace: str, exporter_url: str) -> list[dict[str, Any]]:
    """``count`` copies of the owned example (``workerpool-owned.yaml``), each on one of the
    exporter's queues, at one pod each."""
    owned = next(p for p in load_examples() if p["metadata"]["name"] == "emails")
    pools = []
    for i in range(count):
        spec = json.loads(json.dumps(owned["spec"]))
        spec["queues"] = [QUEUES[i % len(QUEUES)]]
        spec["minReplicas"] = 1
        spec["metrics"] = {"exporter": {"url": exporter_url}}
        pools.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "WorkerPool",
                "metadata": {"name": f"pool-{i:04d}", "namespace": namespace},
                "spec": spec,
            }
        )
    return pools


def lease(cluster: Cluster, namespace: str) -> client.V1Lease | None:
    try:
        return client.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def lease_holder(cluster: Cluster, namespace: str) -> str | None:
    found = lease(cluster, namespace)
    return (found.spec.holder_identity or None) if found is not None else None


def transitions(cluster: Cluster, namespace: str) -> int:
    found = lease(cluster, namespace)
    return (found.spec.lease_transitions or 0) if found is not None else 0


def statuses(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    listing = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {p["metadata"]["name"]: p.get("status") or {} for p in listing["items"]}


def ready(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def sizes(cluster: Cluster, namespace: str) -> dict[str, int]:
    listing = cluster.apps.list_namespaced_deployment(namespace)
    return {
        d.metadata.name: d.spec.replicas
        for d in listing.items
        if d.metadata.name.startswith("pool-")
    }


def pods_ready(cluster: Cluster, namespace: str, count: int) -> bool:
    listing = cluster.apps.list_namespaced_deployment(namespace)
    owned = [d for d in listing.items if d.metadata.name.startswith("pool-")]
    return len(owned) == count and all(
        (d.status.ready_replicas or 0) == d.spec.replicas for d in owned
    )


def classify(entries: list[dict[str, Any]]) -> dict[str, int]:
    """The writes that matter after a failover, from audit entries."""
    counts: Counter[str] = Counter()
    for entry in entries:
        ref = entry.get("objectRef") or {}
        verb, resource, sub = entry["verb"], ref.get("resource"), ref.get("subresource")
        if verb not in WRITES:
            continue
        if resource == "deployments" and sub == "scale":
            counts["scale patches"] += 1
        elif resource == "deployments":
            counts["Deployment writes"] += 1
        elif resource == "events":
            counts["Events"] += 1
        elif resource == PLURAL and sub == "status":
            counts["status patches"] += 1
        elif resource == "leases":
            counts["Lease writes"] += 1
        else:
            counts[f"{verb} {resource}{'/' + sub if sub else ''}"] += 1
    return dict(counts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = Path(os.environ["KUBECONFIG"]).resolve()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    cluster = Cluster(
        kubeconfig=kubeconfig, api=api, version=client.VersionApi(api).get_code().git_version
    )
    workdir = ROOT / "var" / "e2e-failover" / now_utc().strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {
        "kubernetes": cluster.version,
        "pools": args.pools,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_at_start": load(),
        "logs": str(workdir.relative_to(ROOT)),
    }
    standin = (
        start_standin_kubelet(cluster, workdir / "standin-kubelet.log")
        if needs_standin_kubelet(cluster)
        else None
    )
    result["nodes"] = "stand-in kubelet" if standin else "real node(s)"
    namespace = create_namespace(cluster, "tide-failover")
    broker = Broker(url=args.redis, keyprefix=f"k8s-failover-{uuid.uuid4().hex[:6]}:")
    exporter = Exporter(broker=broker, port=free_port(), log=workdir / "exporter.log")
    replicas: dict[str, Operator] = {}
    try:
        install_chart(cluster, namespace)
        cluster.apps.patch_namespaced_deployment_scale(
            OPERATOR_SA, namespace, {"spec": {"replicas": 0}}
        )
        token = token_kubeconfig(cluster, namespace=namespace, path=workdir / "operator.kubeconfig")
        exporter.start()
        for pool in pools_of(args.pools, namespace=namespace, exporter_url=exporter.url):
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, pool)

        def start(identity: str) -> Operator:
            replica = Operator(
                namespace=namespace,
                kubeconfig=token,
                broker=broker,
                workdir=workdir / identity,
                identity=identity,
            )
            replica.start()
            replicas[identity] = replica
            return replica

        first, second = REPLICAS
        started = time.monotonic()
        start(first)
        holder, seconds = measure(lambda: lease_holder(cluster, namespace), timeout=60)
        assert holder == first, f"the Lease names {holder!r}, not {first}"
        result["first_lease_s"] = round(seconds, 2)
        start(second)

        def all_acting(identity: str) -> bool:
            found = statuses(cluster, namespace)
            return len(found) == args.pools and all(
                ready(s) and s.get("actingReplica") == identity for s in found.values()
            )

        def settled() -> bool:
            holder = lease_holder(cluster, namespace)
            return holder is not None and all_acting(holder)

        done, _ = measure(settled, timeout=300, interval=1)
        assert done, "not every pool Ready and acted on by the Lease's holder"
        result["start_to_every_pool_ready_s"] = round(time.monotonic() - started, 2)
        done, _ = measure(
            lambda: pods_ready(cluster, namespace, args.pools), timeout=300, interval=1
        )
        assert done, "not every pool's pod ready"
        # Idle means the first scale-down window (seeded at the first reconcile) has passed.
        idle_from = started + WINDOW + 2 * POLL
        time.sleep(max(0.0, idle_from - time.monotonic()))

        # ... and the pools' first round of worker probes is over: no write but the Lease's
        # for QUIET seconds (each pool reports once what its workers answered).
        def quiet() -> bool:
            recent = audit_entries(namespace, now_utc() - timedelta(seconds=QUIET)) or []
            return time.monotonic() - started > QUIET and not any(
                e["verb"] in WRITES and not is_lease(e) for e in recent
            )

        calm, _ = measure(quiet, timeout=300, interval=1)
        assert calm, "the operator kept writing"
        result["start_to_quiet_s"] = round(time.monotonic() - started - QUIET, 1)

        # -- idle steady state: two replicas, one acting --------------------------------
        # Handovers while the pools started (a holder that could not renew in time).
        result["lease_transitions_before_idle"] = transitions(cluster, namespace)
        since = now_utc()
        result["load_idle"] = load()
        time.sleep(args.idle)  # a measurement window, not a synchronisation
        until = now_utc()
        entries = audit_entries(namespace, since, until)
        assert entries is not None, "no audit log (TIDE_E2E_AUDIT_LOG)"
        minutes = args.idle / 60
        leases = [e for e in entries if is_lease(e)]
        writes = [e for e in entries if e["verb"] in WRITES]
        result["idle"] = {
            "seconds": args.idle,
            "requests_per_pool_per_minute": round(len(entries) / args.pools / minutes, 3),
            "requests_per_pool_per_minute_beside_the_lease": round(
                (len(entries) - len(leases)) / args.pools / minutes, 3
            ),
            "lease_requests_per_minute": round(len(leases) / minutes, 1),
            "writes_per_minute_beside_the_lease": round(
                len([e for e in writes if e not in leases]) / minutes, 1
            ),
            "by_verb_per_minute": {
                k: round(v / minutes, 1) for k, v in describe_requests(entries).most_common()
            },
        }

        result["lease_transitions_in_idle"] = (
            transitions(cluster, namespace) - result["lease_transitions_before_idle"]
        )

        # -- failover: SIGKILL the holder -------------------------------------------------
        before = sizes(cluster, namespace)
        holder = lease_holder(cluster, namespace)
        assert holder in replicas, f"the Lease names {holder!r}"
        victim = replicas[holder]
        second = next(r for r in REPLICAS if r != holder)
        result["killed"] = holder
        assert victim.process is not None
        killed_at = now_utc()
        killed = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        result["load_failover"] = load()
        taken, takeover = measure(
            lambda: lease_holder(cluster, namespace) == second, timeout=120, interval=0.1
        )
        result["lease_takeover_s"] = round(takeover, 2) if taken else None
        done, _ = measure(lambda: all_acting(second), timeout=180, interval=0.5)
        result["every_pool_names_new_replica_s"] = (
            round(time.monotonic() - killed, 2) if done else None
        )
        survivor = replicas[second]
        result["survivor_acting_metric"] = {
            dict(labels).get("replica", "?"): value
            for labels, value in survivor.samples("tide_operator_acting").items()
        }
        time.sleep(max(0.0, killed + args.after - time.monotonic()))
        after = sizes(cluster, namespace)
        entries = audit_entries(namespace, killed_at, now_utc()) or []
        result["after_kill"] = {
            "seconds": args.after,
            "writes": classify(entries),
            "requests_by_verb": dict(describe_requests(entries).most_common()),
            "replicas_moved": {
                name: f"{before.get(name)}→{after.get(name)}"
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name)
            },
            "survivor_scale_events": sum(
                survivor.samples("tide_workerpool_scale_events_total").values()
            ),
        }
        result["load_at_end"] = load()
        return result
    finally:
        # Pools go while an operator runs (it removes its finalizer); then the namespace.
        for name in statuses(cluster, namespace):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        measure(lambda: not statuses(cluster, namespace), timeout=120, interval=1)
        for name in statuses(cluster, namespace):
            cluster.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}}
            )
        for replica in replicas.values():
            if replica.alive():
                replica.stop()
        exporter.stop()
        broker.cleanup()
        delete_namespace(cluster, namespace, timeout=300)
        if standin is not None:
            standin.terminate()
            standin.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument(
        "--after", type=float, default=60.0, help="seconds after the kill whose writes count"
    )
    parser.add_argument(
        "--redis", default=os.environ.get("TIDE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for name in ("KUBECONFIG", "TIDE_E2E_AUDIT_LOG"):
        if not os.environ.get(name):
            parser.error(f"set {name} (see docs/operator.md, 'End-to-end on a real cluster')")
    result = run(args)
    print(json.dumps(result, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
