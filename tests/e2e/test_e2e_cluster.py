"""The operator and the chart on a real cluster, checked with figures (``make e2e``).

One scenario, in file order (each test leaves the pools as the next one expects): install,
start, idle steady state, restart, bursts and windows, scale to zero, an exporter outage,
pause, deletion, and the RBAC record. Bounds come from the product's contract
(docs/operator.md): a change reaches ``spec.replicas`` within one polling interval plus the
exporter's interval (plus Prometheus's scrape interval where it sits between) plus 1 s; a
scale-down waits out its window; nothing is denied.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    BATCH_COOLDOWN,
    EXPORTER_INTERVAL,
    GROUP,
    OPERATOR_SA,
    PLURAL,
    SCRAPE_INTERVAL,
    VERSION,
    Broker,
    Cluster,
    Exporter,
    Install,
    Operator,
    Prometheus,
    Report,
    adopted_deployment,
    example_pools,
    load_examples,
    measure,
    summarise_log,
)
from kubernetes import client

pytestmark = pytest.mark.e2e

#: Default ``pollingInterval`` of the examples that do not set one; ``batch`` polls every 10 s.
POLL = 5.0
BATCH_POLL = 10.0
#: One change to ``spec.replicas``: a polling interval, the exporter's read, and 1 s.
REACT = POLL + EXPORTER_INTERVAL + 1.0
#: The default scale-down window (docs/operator.md), which ``emails`` keeps.
WINDOW = 30.0
#: Before lowering the replicas the operator asks the pool's workers what they hold
#: (``celery inspect active`` and ``reserved``, 2 s each); where no worker runs (a stand-in
#: kubelet, or an image that never started) nobody answers and both wait out the timeout.
MARK = 2 * 2.0
#: Steady-state window for the request rate.
STEADY = 60.0

_EXAMPLES = {pool["metadata"]["name"]: pool["spec"] for pool in load_examples()}
#: Pool → the Deployment it scales: ``<pool>-workers`` for a template, else its target.
#: A denial in the operator's log: "Forbidden" (the API's reason) or the code beside its
#: key; a bare "403" could be a timestamp's milliseconds.
DENIED = re.compile(r"Forbidden|(?:code|status)\W{0,4}403\b")
OWNED = {name: f"{name}-workers" for name, spec in _EXAMPLES.items() if "template" in spec}
TARGETS = {
    **OWNED,
    **{
        name: spec["scaleTargetRef"]["name"]
        for name, spec in _EXAMPLES.items()
        if "scaleTargetRef" in spec
    },
}
ADOPTED = TARGETS["reports"]
POOLS = len(_EXAMPLES)
MIN_SIZES = {name: spec.get("minReplicas", 0) for name, spec in _EXAMPLES.items()}


def condition(pool: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((pool or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


def is_true(pool: dict[str, Any] | None, kind: str) -> bool:
    found = condition(pool, kind)
    return bool(found and found.get("status") == "True")


def pools_state(cluster: Cluster, namespace: str) -> str:
    lines = []
    for item in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
        "items"
    ]:
        status = item.get("status") or {}
        lines.append(
            f"{item['metadata']['name']}: desired={status.get('desiredReplicas')} "
            f"current={status.get('replicas')} decision={status.get('lastDecision')!r} "
            + " ".join(
                f"{c['type']}={c['status']}/{c.get('reason')}"
                for c in status.get("conditions") or []
            )
        )
    return "\n".join(lines)


# -- the audit log (optional) ----------------------------------------------------------------


def audit_entries(
    operator_ns: str, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]] | None:
    """Requests of the operator's ServiceAccount in the API server's audit log, one entry per
    request (``TIDE_E2E_AUDIT_LOG``; ``None`` when there is no audit log to read)."""
    path = os.environ.get("TIDE_E2E_AUDIT_LOG")
    if not path or not Path(path).exists():
        return None
    user = f"system:serviceaccount:{operator_ns}:{OPERATOR_SA}"
    seen: dict[str, dict[str, Any]] = {}
    with open(path) as handle:
        for line in handle:
            if user not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # the line the server is writing now
                continue
            if entry.get("user", {}).get("username") != user:
                continue
            at = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if at < since or (until is not None and at > until):
                continue
            # A watch has a ResponseStarted and a ResponseComplete entry: count it once,
            # with the later stage's code.
            seen[entry["auditID"]] = entry
    return list(seen.values())


def is_lease(entry: dict[str, Any]) -> bool:
    """A request about the operator's Lease (``coordination.k8s.io`` leases)."""
    ref = entry.get("objectRef") or {}
    return ref.get("apiGroup") == "coordination.k8s.io" and ref.get("resource") == "leases"


def describe_requests(entries: list[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for entry in entries:
        ref = entry.get("objectRef") or {}
        resource = ref.get("resource", entry.get("requestURI", ""))
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        counts[f"{entry['verb']} {resource}"] += 1
    return counts


def now_utc() -> datetime:
    return datetime.now(UTC)


def require_operator(operator: Operator, report: Report, check: str) -> None:
    """Fail at once, with the operator's own last words, when it is not running."""
    if not operator.alive():
        report.record(check, ok=False, detail="not run: " + operator.exit_note(words=False))
        pytest.fail(operator.exit_note())


# -- the scenario ----------------------------------------------------------------------------


def test_control_plane(cluster: Cluster, standin_kubelet: bool, report: Report) -> None:
    ok = report.record(
        "cluster answers /version",
        ok=bool(cluster.version),
        detail=f"{cluster.version}; {report.facts.get('nodes')}",
    )
    assert ok


def test_chart_installs(cluster: Cluster, chart: Install, report: Report) -> None:
    # Every pod the chart's workloads asked for was admitted under `restricted`: a pod the
    # namespace's Pod Security refuses shows up as a FailedCreate event of its controller.
    def pods_created() -> bool:
        pods = cluster.core.list_namespaced_pod(chart.namespace).items
        return len(pods) >= 1

    measure(pods_created, timeout=30)
    refused = [
        e.message
        for e in cluster.core.list_namespaced_event(chart.namespace).items
        if e.reason == "FailedCreate"
    ]
    pods = cluster.core.list_namespaced_pod(chart.namespace).items
    ok = report.record(
        "chart installs (namespace scope, restricted namespace)",
        ok=not refused,
        seconds=chart.seconds,
        detail=f"{chart.how}; {len(chart.objects)} objects, {len(pods)} pods admitted, "
        f"{len(refused)} refused" + (f": {refused[0]}" if refused else ""),
    )
    assert ok, refused


def test_operator_starts_clean(
    cluster: Cluster,
    chart: Install,
    operator: Operator,
    exporter: Exporter,
    prometheus: Prometheus,
    report: Report,
) -> None:
    namespace = chart.namespace
    cluster.apps.create_namespaced_deployment(namespace, adopted_deployment(namespace))
    pools = example_pools(
        namespace=namespace, exporter_url=exporter.url, prometheus_url=prometheus.url
    )
    for pool in pools:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, pool)
    names = [p["metadata"]["name"] for p in pools]

    operator.start()
    up, startup = measure(lambda: operator.healthy() or not operator.alive(), timeout=60)
    alive = operator.alive()
    report.record(
        "operator process starts (liveness answers)",
        ok=alive and bool(up),
        seconds=startup,
        bound="60",
        detail="running"
        if alive
        else f"exited {operator.process and operator.process.returncode}: "
        + operator.logs()[-400:],
    )
    assert alive, operator.logs()[-5000:]

    # Every pool reconciled: the operator wrote its status (Ready=True) and created the
    # owned Deployments at their minimum size.
    def reconciled() -> bool:
        return all(is_true(cluster.pool(namespace, n), "Ready") for n in names) and all(
            cluster.deployment(namespace, d) is not None for d in OWNED.values()
        )

    done, seconds = measure(reconciled, timeout=60)
    sizes = {name: cluster.replicas(namespace, d) for name, d in TARGETS.items()}
    expected = MIN_SIZES
    log = operator.logs()
    problems = [w for w in ("Traceback", "ERROR") if w in log] + (
        ["403"] if DENIED.search(log) else []
    )
    alive = operator.alive()
    ok = report.record(
        "operator start → every pool Ready, owned Deployments created",
        ok=bool(done) and sizes == expected and not problems and alive,
        seconds=seconds,
        bound=f"{BATCH_POLL:g} (slowest pollingInterval)",
        detail=f"sizes {sizes}; "
        + ("" if alive else f"operator exited ({operator.process and operator.process.poll()}); ")
        + ("log: " + summarise_log(log) if problems else "log: no traceback, 403 or ERROR"),
    )
    assert ok, pools_state(cluster, namespace) + "\n" + log[-5000:]
    assert seconds <= BATCH_POLL


def pool_statuses(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    listing = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {p["metadata"]["name"]: p.get("status") or {} for p in listing["items"]}


def changed_fields(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Paths of the status fields that differ (conditions by type)."""
    paths = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if key == "conditions":
            old = {c["type"]: c for c in old or []}
            new = {c["type"]: c for c in new or []}
        if isinstance(old, dict) and isinstance(new, dict):
            paths += changed_fields(old, new, f"{prefix}{key}.")
        elif old != new:
            paths.append(f"{prefix}{key}")
    return paths


def settled(cluster: Cluster, namespace: str) -> bool:
    """Every Deployment's pods are ready and every pool's status says so."""
    statuses = pool_statuses(cluster, namespace)
    for pool, deployment in TARGETS.items():
        found = cluster.deployment(namespace, deployment)
        if found is None:
            return False
        ready = found.status.ready_replicas or 0
        if ready != found.spec.replicas:
            return False
        if statuses.get(pool, {}).get("readyReplicas", ready) != ready:
            return False
    return True


def test_idle_steady_state(
    cluster: Cluster, chart: Install, operator: Operator, report: Report
) -> None:
    """An idle pool costs reads only: requests per pool per minute from the audit log."""
    require_operator(operator, report, "idle steady state")
    namespace = chart.namespace

    # Idle means settled: pods ready, status says so, and the scale-down window every pool
    # starts with (seeded with the current size) has passed, since its end is a decision
    # worth a status write.
    def window_passed() -> bool:
        # The pool's first reconcile is when its Ready condition was first set.
        stamps = [
            datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00"))
            for status in pool_statuses(cluster, namespace).values()
            for c in status.get("conditions") or []
            if c["type"] == "Ready"
        ]
        return bool(stamps) and (now_utc() - max(stamps)).total_seconds() >= WINDOW + POLL

    measure(lambda: settled(cluster, namespace) and window_passed(), timeout=WINDOW + 3 * REACT)
    start = now_utc()
    replicas_before = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
    statuses_before = pool_statuses(cluster, namespace)
    # A measurement window, not a synchronisation: the figure is what happens in it.
    time.sleep(STEADY)
    end = now_utc()
    replicas_after = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
    statuses_after = pool_statuses(cluster, namespace)
    moved = {
        pool: fields
        for pool in statuses_after
        if (fields := changed_fields(statuses_before.get(pool, {}), statuses_after[pool]))
    }
    entries = audit_entries(namespace, start, end)
    pools = POOLS
    if entries is None:
        ok = report.record(
            "idle steady state: no scale, no status change",
            ok=replicas_before == replicas_after and not moved,
            seconds=STEADY,
            detail="no audit log (TIDE_E2E_AUDIT_LOG): request rate not measured; "
            f"status fields changed: {moved or 'none'}",
        )
    else:
        # The Lease's renewals (coordination.k8s.io leases, GET/PUT every 2 s) are the
        # operator's own bookkeeping, the same at one pool as at a thousand: not pool writes.
        leases = [e for e in entries if is_lease(e)]
        entries = [e for e in entries if not is_lease(e)]
        writes = [e for e in entries if e["verb"] in ("create", "update", "patch", "delete")]
        minutes = STEADY / 60
        counts = describe_requests(entries)
        report.facts["steady_state_requests_per_minute"] = {
            k: round(v / minutes, 1) for k, v in counts.items()
        }
        ok = report.record(
            "idle steady state: requests per pool per minute (audit log)",
            ok=replicas_before == replicas_after and not writes,
            seconds=STEADY,
            bound="0 writes",
            detail=f"{len(entries) / pools / minutes:.1f} requests/pool/min, "
            f"{len(writes) / minutes:.0f} writes/min; "
            + (", ".join(f"{k}: {v}" for k, v in counts.most_common()) or "no request")
            + f"; Lease (not counted): {len(leases) / minutes:.0f} requests/min"
            + (f"; status fields changed: {moved}" if moved else ""),
        )
    assert ok, (replicas_before, replicas_after, moved)


def test_restart_without_spurious_scale(
    cluster: Cluster, chart: Install, operator: Operator, report: Report
) -> None:
    require_operator(operator, report, "operator restart: no spurious scale")
    namespace = chart.namespace
    before = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
    stopped = operator.stop()
    restarted = now_utc()
    operator.start()

    # Two ticks of every pool (the reconcile histogram's count) after the new start.
    def ticked() -> bool:
        if not operator.alive():
            return True
        try:
            count = sum(operator.samples("tide_operator_reconcile_duration_seconds_count").values())
        except Exception:
            return False
        return count >= 2 * POOLS

    _, seconds = measure(ticked, timeout=60)
    after = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
    # The operator's own count of the scales it made since this start (no series: none).
    scaled = (
        int(sum(operator.samples("tide_workerpool_scale_events_total").values()))
        if operator.alive()
        else -1
    )
    entries = audit_entries(namespace, restarted)
    patches = (
        "n/a"
        if entries is None
        else sum(
            1
            for e in entries
            if (e.get("objectRef") or {}).get("subresource") == "scale" and e["verb"] == "patch"
        )
    )
    ok = report.record(
        "operator restart: no spurious scale",
        ok=operator.alive() and before == after and scaled == 0 and patches in (0, "n/a"),
        seconds=seconds,
        bound="0 scale events",
        detail=f"stopped in {stopped:.1f} s; two ticks per pool after restart; replicas "
        f"{'unchanged' if before == after else f'{before} → {after}'}; scale events {scaled}; "
        f"scale patches in audit log {patches}",
    )
    assert ok, operator.logs()[-3000:]


#: The operator's Lease (docs/operator.md, "High availability") and the failover bound
#: (issue 14: a killed acting replica is replaced within 15 s).
LEASE = "tide-operator"
TAKEOVER_BOUND = 15.0


def lease_holder(cluster: Cluster, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity or None


def all_name(cluster: Cluster, namespace: str, identity: str) -> bool:
    """Every pool's ``status.actingReplica`` names ``identity``."""
    statuses = pool_statuses(cluster, namespace)
    return bool(statuses) and all(s.get("actingReplica") == identity for s in statuses.values())


def acting(replica: Operator) -> float | None:
    """``tide_operator_acting{replica=<identity>}`` of a running replica."""
    if not replica.alive():
        return None
    try:
        found = replica.samples("tide_operator_acting")
    except Exception:
        return None
    return found.get((("replica", replica.identity),))


def reconciles(replica: Operator) -> float:
    try:
        return sum(replica.samples("tide_operator_reconcile_duration_seconds_count").values())
    except Exception:
        return 0.0


def pool_events_since(cluster: Cluster, namespace: str, since: datetime) -> list[str]:
    found = []
    for event in cluster.core.list_namespaced_event(namespace).items:
        if event.involved_object.kind != "WorkerPool":
            continue
        stamp = event.last_timestamp or event.event_time or event.first_timestamp
        if stamp is not None and stamp >= since:
            found.append(f"{event.involved_object.name}: {event.reason}")
    return found


def test_failover_to_the_standby(
    cluster: Cluster, chart: Install, operator: Operator, report: Report
) -> None:
    """Two replicas; SIGKILL the one acting: the standby holds the Lease and every pool's
    status names it within 15 s, with no scale patch and no Event after the kill."""
    require_operator(operator, report, "operator failover")
    namespace = chart.namespace
    operator.stop()  # the session's replica releases the Lease; these two take it
    a, b = (
        Operator(
            namespace=namespace,
            kubeconfig=operator.kubeconfig,
            broker=operator.broker,
            workdir=operator.workdir / f"failover-{name}",
            identity=f"tide-e2e-{name}",
        )
        for name in ("a", "b")
    )
    try:
        a.start()
        held, _ = measure(
            lambda: (
                lease_holder(cluster, namespace) == a.identity
                and all_name(cluster, namespace, a.identity)
            ),
            timeout=60,
        )
        assert held, a.logs()[-3000:]
        b.start()
        # The standby is up, stands by, and its pools have run two shadow ticks each.
        warm, _ = measure(lambda: acting(b) == 0.0 and reconciles(b) >= 2 * POOLS, timeout=60)
        assert warm, b.logs()[-3000:]
        before = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
        killed_at = now_utc()
        assert a.process is not None
        a.process.kill()
        _, lease_seconds = measure(
            lambda: lease_holder(cluster, namespace) == b.identity, timeout=60
        )
        named, named_seconds = measure(lambda: all_name(cluster, namespace, b.identity), timeout=60)
        named_seconds = max(named_seconds, lease_seconds)  # measured one after the other
        # Two ticks of every pool as the acting replica.
        ticks = reconciles(b)
        measure(lambda: reconciles(b) >= ticks + 2 * POOLS, timeout=60)
        after = {d: cluster.replicas(namespace, d) for d in TARGETS.values()}
        events = pool_events_since(cluster, namespace, killed_at)
        entries = audit_entries(namespace, killed_at)
        if entries is None:
            audited = "no audit log (TIDE_E2E_AUDIT_LOG): scale patches not counted"
            patches = 0
        else:
            patches = sum(
                1
                for e in entries
                if (e.get("objectRef") or {}).get("subresource") == "scale" and e["verb"] == "patch"
            )
            writes = describe_requests(
                [
                    e
                    for e in entries
                    if not is_lease(e) and e["verb"] in ("create", "update", "patch", "delete")
                ]
            )
            audited = f"scale patches {patches}; writes after the kill: {dict(writes)}"
        ok = report.record(
            "operator failover: SIGKILL of the acting replica → the standby acts",
            ok=bool(named)
            and named_seconds <= TAKEOVER_BOUND
            and before == after
            and not events
            and patches == 0,
            seconds=named_seconds,
            bound=f"{TAKEOVER_BOUND:g}",
            detail=f"Lease taken over after {lease_seconds:.1f} s, every pool's "
            f"status.actingReplica after {named_seconds:.1f} s; replicas "
            f"{'unchanged' if before == after else f'{before} → {after}'}; Events after the "
            f"kill: {events or 'none'}; {audited}",
        )
        assert ok, b.logs()[-3000:]
    finally:
        for replica in (a, b):
            if replica.alive():
                replica.stop()
        operator.start()
        measure(lambda: operator.healthy() or not operator.alive(), timeout=60)


def scaled_to(cluster: Cluster, namespace: str, deployment: str, replicas: int) -> Any:
    return lambda: cluster.replicas(namespace, deployment) == replicas


def test_burst_scales_up(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "burst 40 tasks → emails 1→10 replicas")
    # 40 tasks on `emails` (concurrency 4, target backlog 4 a worker) need 10 workers; the
    # default scale-up rules allow 1 → 11 at once.
    broker.publish("emails", 40)
    done, seconds = measure(
        scaled_to(cluster, chart.namespace, OWNED["emails"], 10), timeout=3 * REACT
    )
    pods, ready_seconds = measure(
        lambda: (
            len(
                [
                    p
                    for p in cluster.core.list_namespaced_pod(
                        chart.namespace, label_selector="tide.dev/workerpool=emails"
                    ).items
                    if any(
                        c.type == "Ready" and c.status == "True" for c in p.status.conditions or []
                    )
                ]
            )
            >= 10
        ),
        timeout=60,
    )
    ok = report.record(
        "burst 40 tasks → emails 1→10 replicas",
        ok=bool(done) and seconds <= REACT,
        seconds=seconds,
        bound=f"{REACT:g} (polling {POLL:g} + exporter {EXPORTER_INTERVAL:g} + 1)",
        detail=f"replicas {cluster.replicas(chart.namespace, OWNED['emails'])}; "
        f"10 pods Ready {ready_seconds + seconds:.1f} s after the burst"
        if pods
        else "pods not Ready",
    )
    assert ok, pools_state(cluster, chart.namespace)


def test_scale_down_after_window(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "queue drained → emails 10→1 after the scale-down window")
    broker.purge("emails")
    done, seconds = measure(
        scaled_to(cluster, chart.namespace, OWNED["emails"], 1), timeout=WINDOW + 4 * REACT
    )
    pods, _ = measure(
        lambda: (
            len(
                cluster.core.list_namespaced_pod(
                    chart.namespace, label_selector="tide.dev/workerpool=emails"
                ).items
            )
            == 1
        ),
        timeout=60,
    )
    low, high = WINDOW - POLL, WINDOW + REACT + MARK
    # Idle-first: the pods got their pod-deletion-cost before the replicas dropped (no
    # worker answers here, so every pod carries the "unknown" cost).
    costs = sorted(
        {
            (p.metadata.annotations or {}).get("controller.kubernetes.io/pod-deletion-cost", "-")
            for p in cluster.core.list_namespaced_pod(
                chart.namespace, label_selector="tide.dev/workerpool=emails"
            ).items
        }
    )
    ok = report.record(
        "queue drained → emails 10→1 after the scale-down window",
        ok=bool(done) and low <= seconds <= high and bool(pods),
        seconds=seconds,
        bound=f"{low:g}-{high:g} (window {WINDOW:g} + marking)",
        detail=f"replicas {cluster.replicas(chart.namespace, OWNED['emails'])}; "
        + ("9 pods removed by the ReplicaSet controller" if pods else "pods not removed")
        + f"; pod-deletion-cost on the pod left: {', '.join(costs)}",
    )
    assert ok, pools_state(cluster, chart.namespace)


def test_adoption_touches_only_replicas(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "adopted Deployment: only replicas change")
    namespace = chart.namespace
    before = cluster.apps.read_namespaced_deployment(ADOPTED, namespace).to_dict()
    broker.publish("reports", 12)  # concurrency 2, target backlog 4 a worker: 3 workers
    done, seconds = measure(scaled_to(cluster, namespace, ADOPTED, 3), timeout=3 * REACT)
    after = cluster.apps.read_namespaced_deployment(ADOPTED, namespace).to_dict()

    spec_before = {**before["spec"], "replicas": None}
    spec_after = {**after["spec"], "replicas": None}
    ignored = {"deployment.kubernetes.io/revision"}

    def annotations(deployment: dict[str, Any]) -> dict[str, str]:
        found = deployment["metadata"]["annotations"] or {}
        return {k: v for k, v in found.items() if k not in ignored}

    managers = {
        m["manager"]: sorted(json.loads(json.dumps(m.get("fields_v1") or {})).get("f:spec", {}))
        for m in after["metadata"]["managed_fields"] or []
        if m["operation"] == "Update"
        and m.get("subresource") in (None, "scale")
        and "f:spec" in (m.get("fields_v1") or {})
    }
    differences = []
    if spec_before != spec_after:
        differences.append("spec")
    if before["metadata"]["labels"] != after["metadata"]["labels"]:
        differences.append("labels")
    if annotations(before) != annotations(after):
        differences.append("annotations")
    if after["metadata"].get("owner_references"):
        differences.append("ownerReferences")
    ok = report.record(
        "adopted Deployment: only replicas change (burst 12 → 1→3)",
        ok=bool(done) and seconds <= REACT and not differences,
        seconds=seconds,
        bound=f"{REACT:g}",
        detail=(
            f"changed besides replicas: {differences}"
            if differences
            else "spec, labels, annotations, owners unchanged"
        )
        + f"; spec field managers {managers}",
    )
    assert ok, pools_state(cluster, namespace)


def test_prometheus_pool_scales(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "Prometheus pool: burst 40 → default 2→5")
    # `default` reads Prometheus (scraping the exporter every second): 40 tasks, concurrency
    # 8 → 5 workers.
    broker.publish("default", 40)
    bound = POLL + EXPORTER_INTERVAL + SCRAPE_INTERVAL + 1
    done, seconds = measure(
        scaled_to(cluster, chart.namespace, OWNED["default"], 5), timeout=3 * bound
    )
    ok = report.record(
        "Prometheus pool: burst 40 → default 2→5",
        ok=bool(done) and seconds <= bound,
        seconds=seconds,
        bound=f"{bound:g} (+ scrape {SCRAPE_INTERVAL:g})",
        detail=f"replicas {cluster.replicas(chart.namespace, OWNED['default'])}",
    )
    assert ok, pools_state(cluster, chart.namespace)


def test_scale_to_zero_and_back(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "scale from zero and back to zero")
    namespace, deployment = chart.namespace, OWNED["batch"]
    react = BATCH_POLL + EXPORTER_INTERVAL + 1
    broker.publish("batch", 10)  # above the activation threshold (5); 1 task per worker
    woke, up = measure(
        lambda: (cluster.replicas(namespace, deployment) or 0) > 0, timeout=3 * react
    )
    awake = cluster.replicas(namespace, deployment)
    woke_ok = report.record(
        "scale from zero: 10 tasks (activation above 5) → batch 0→10",
        ok=bool(woke) and up <= react and awake == 10,
        seconds=up,
        bound=f"{react:g} (polling {BATCH_POLL:g} + exporter + 1)",
        detail=f"replicas {awake}",
    )
    broker.purge("batch")
    slept, down = measure(
        scaled_to(cluster, namespace, deployment, 0), timeout=BATCH_COOLDOWN + 4 * react
    )
    low, high = BATCH_COOLDOWN - BATCH_POLL, BATCH_COOLDOWN + react + MARK
    events = [
        e.reason
        for e in cluster.core.list_namespaced_event(namespace).items
        if e.involved_object.name == "batch"
    ]
    ok = report.record(
        f"queue drained → batch 10→0 after cooldownPeriod {BATCH_COOLDOWN}",
        ok=bool(slept) and low <= down <= high,
        seconds=down,
        bound=f"{low:g}-{high:g}",
        detail=f"replicas {cluster.replicas(namespace, deployment)}; events {sorted(set(events))}",
    )
    assert woke, pools_state(cluster, namespace)
    assert awake == 10, pools_state(cluster, namespace)
    assert woke_ok, pools_state(cluster, namespace)
    assert ok, pools_state(cluster, namespace)


def test_metrics_outage_fallback_and_hold(
    cluster: Cluster, chart: Install, exporter: Exporter, report: Report, operator: Operator
) -> None:
    """The exporter stops: `reports` (fallback 2 once more than 3 reads failed, KEDA's
    count) runs 2; `emails` (no fallback) holds; both say so; then the exporter comes back."""
    require_operator(operator, report, "exporter down → fallback / hold")
    namespace = chart.namespace
    held = {
        name: cluster.replicas(namespace, d)
        for name, d in {"emails": OWNED["emails"], "reports": ADOPTED}.items()
    }
    exporter.stop()
    # The first failed read within a polling interval, three more, then the scale-down
    # (3 → 2) with its idle-first marking.
    bound = POLL + 3 * POLL + MARK + 1
    fell, seconds = measure(
        lambda: (
            cluster.replicas(namespace, ADOPTED) == 2
            and is_true(cluster.pool(namespace, "reports"), "Fallback")
        ),
        timeout=3 * bound,
    )
    emails = cluster.pool(namespace, "emails")
    # Metrics trouble is MetricsAvailable=False; Ready stays True (helm --wait waits on it).
    ready = condition(emails, "Ready") or {}
    metrics = condition(emails, "MetricsAvailable") or {}
    emails_held = cluster.replicas(namespace, OWNED["emails"]) == held["emails"]
    default_during = cluster.replicas(namespace, OWNED["default"])
    fell_ok = report.record(
        "exporter down → reports falls back to 2; emails holds",
        ok=bool(fell)
        and seconds <= bound
        and emails_held
        and metrics.get("status") == "False"
        and ready.get("status") == "True",
        seconds=seconds,
        bound=f"{bound:g} (4 failed reads x {POLL:g} + marking {MARK:g} + 1)",
        detail=f"reports {held['reports']}→{cluster.replicas(namespace, ADOPTED)}; emails "
        f"{'held' if emails_held else 'moved'} at {cluster.replicas(namespace, OWNED['emails'])}, "
        f"MetricsAvailable={metrics.get('status')}/{metrics.get('reason')}, "
        f"Ready={ready.get('status')}; default (Prometheus) at {default_during}",
    )
    exporter.start()
    back, recovered = measure(
        lambda: (
            not is_true(cluster.pool(namespace, "reports"), "Fallback")
            and is_true(cluster.pool(namespace, "emails"), "MetricsAvailable")
            and cluster.replicas(namespace, ADOPTED) == 3
        ),
        timeout=6 * REACT,
    )
    ok = report.record(
        "exporter back → Fallback=False, MetricsAvailable=True, reports 2→3",
        ok=bool(back) and recovered <= REACT,
        seconds=recovered,
        bound=f"{REACT:g}",
        detail=f"reports at {cluster.replicas(namespace, ADOPTED)}",
    )
    assert fell, pools_state(cluster, namespace)
    assert fell_ok, pools_state(cluster, namespace)
    assert back, pools_state(cluster, namespace)
    assert ok, pools_state(cluster, namespace)


def test_pause_holds(
    cluster: Cluster, chart: Install, broker: Broker, report: Report, operator: Operator
) -> None:
    require_operator(operator, report, "paused: nothing moves")
    namespace, deployment = chart.namespace, OWNED["emails"]
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "emails", {"spec": {"paused": True}}
    )
    paused, _ = measure(
        lambda: is_true(cluster.pool(namespace, "emails"), "Paused"), timeout=3 * REACT
    )
    broker.publish("emails", 40)
    seen_at = time.monotonic()

    def observed() -> bool:
        status = (cluster.pool(namespace, "emails") or {}).get("status") or {}
        return (status.get("lastObservation") or {}).get("waiting", 0) >= 40

    saw, _ = measure(observed, timeout=3 * REACT)
    # Watch two more ticks with the burst in view: the size must not move.
    sizes = set()
    end = time.monotonic() + 2 * POLL
    while time.monotonic() < end:
        sizes.add(cluster.replicas(namespace, deployment))
        time.sleep(0.5)
    held = time.monotonic() - seen_at
    report.record(
        "paused: 40 tasks seen, emails stays at 1",
        ok=bool(paused) and bool(saw) and sizes == {1},
        seconds=held,
        bound="no move",
        detail=f"sizes seen {sorted(s for s in sizes if s is not None)}; Paused condition "
        f"{'True' if paused else 'not set'}",
    )
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "emails", {"spec": {"paused": False}}
    )
    resumed, seconds = measure(scaled_to(cluster, namespace, deployment, 10), timeout=3 * REACT)
    ok = report.record(
        "unpaused → emails 1→10",
        ok=bool(resumed) and seconds <= POLL + 1,
        seconds=seconds,
        bound=f"{POLL + 1:g} (polling + 1; the figures are already read)",
        detail=f"replicas {cluster.replicas(namespace, deployment)}",
    )
    broker.purge("emails")
    assert paused, pools_state(cluster, namespace)
    assert saw, pools_state(cluster, namespace)
    assert sizes == {1}, pools_state(cluster, namespace)
    assert ok, pools_state(cluster, namespace)


def test_deletion_and_garbage_collection(
    cluster: Cluster, chart: Install, operator: Operator, report: Report
) -> None:
    require_operator(operator, report, "delete pools → garbage collection")
    namespace = chart.namespace
    reports_size = cluster.replicas(namespace, ADOPTED)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "emails")

    def gone() -> bool:
        pods = cluster.core.list_namespaced_pod(
            namespace, label_selector="tide.dev/workerpool=emails"
        ).items
        replicasets = cluster.apps.list_namespaced_replica_set(
            namespace, label_selector="tide.dev/workerpool=emails"
        ).items
        return (
            cluster.pool(namespace, "emails") is None
            and cluster.deployment(namespace, OWNED["emails"]) is None
            and not replicasets
            and not pods
        )

    done, seconds = measure(gone, timeout=120)
    series = (
        [
            labels
            for labels in operator.samples("tide_workerpool_desired_replicas")
            if ("workerpool", "emails") in labels
        ]
        if operator.alive()
        else []
    )
    gone_ok = report.record(
        "delete owned pool → pool, Deployment, ReplicaSets, pods gone (GC)",
        ok=bool(done) and not series,
        seconds=seconds,
        bound="120",
        detail=("all gone" if done else "left behind")
        + f"; operator series for the pool: {len(series)}",
    )
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "reports")
    removed, adopted_seconds = measure(
        lambda: cluster.pool(namespace, "reports") is None, timeout=60
    )
    kept = cluster.deployment(namespace, ADOPTED)
    ok = report.record(
        "delete adopting pool → its Deployment stays, same size",
        ok=bool(removed) and kept is not None and kept.spec.replicas == reports_size,
        seconds=adopted_seconds,
        bound="60",
        detail=f"reports-worker {'kept' if kept else 'DELETED'} at {kept and kept.spec.replicas}",
    )
    assert done, pools_state(cluster, namespace)
    assert gone_ok, pools_state(cluster, namespace)
    assert ok, pools_state(cluster, namespace)


def resource_of(ref: dict[str, Any]) -> str:
    return ref["resource"] + ("/" + ref["subresource"] if ref.get("subresource") else "")


def granted(cluster: Cluster, namespace: str) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the Roles bound to the operator's account grant."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    pairs: set[tuple[str, str, str]] = set()
    for binding in rbac.list_namespaced_role_binding(namespace).items:
        subjects = binding.subjects or []
        if not any(s.kind == "ServiceAccount" and s.name == OPERATOR_SA for s in subjects):
            continue
        ref = binding.role_ref
        role = (
            rbac.read_namespaced_role(ref.name, namespace)
            if ref.kind == "Role"
            else rbac.read_cluster_role(ref.name)
        )
        for rule in role.rules or []:
            for group in rule.api_groups or []:
                for resource in rule.resources or []:
                    for verb in rule.verbs:
                        pairs.add((group, resource, verb))
    return pairs


def test_every_pod_admitted(cluster: Cluster, chart: Install, report: Report) -> None:
    """Pod Security `restricted`: no controller in the namespace was refused a pod (the
    chart's workloads, the owned worker Deployments, the adopted one)."""
    refused = [
        f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in cluster.core.list_namespaced_event(chart.namespace).items
        if e.reason == "FailedCreate"
    ]
    ok = report.record(
        "every pod admitted under restricted (no FailedCreate)",
        ok=not refused,
        bound="0",
        detail=f"{len(refused)} refused" + (f": {refused[0]}" if refused else ""),
    )
    assert ok, refused


def test_every_pool_event_says_why(cluster: Cluster, chart: Install, report: Report) -> None:
    """Every Event the operator posted on a pool carries a reason and a message."""
    events = [
        e
        for e in cluster.core.list_namespaced_event(chart.namespace).items
        if e.involved_object.kind == "WorkerPool"
    ]
    silent = [
        f"{e.involved_object.name}/{e.reason}" for e in events if not (e.message or "").strip()
    ]
    reasons = Counter(e.reason for e in events)
    ok = report.record(
        "every Event on a pool has a reason and a message",
        ok=bool(events) and not silent,
        bound="0 empty",
        detail=f"{len(events)} events ({', '.join(f'{k} x{v}' for k, v in reasons.most_common())})"
        + (f"; empty: {silent}" if silent else ""),
    )
    assert ok, silent


def test_status_tells_pods_are_not_created(
    cluster: Cluster,
    chart: Install,
    exporter: Exporter,
    report: Report,
    operator: Operator,
) -> None:
    """A pool whose pods cannot be created (its ServiceAccount does not exist: the
    ReplicaSet controller's FailedCreate) must not report workers it does not have, and
    says why (issue 10, item 4)."""
    require_operator(operator, report, "pods not created → status says so")
    namespace = chart.namespace
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": "unbuildable", "namespace": namespace},
        "spec": {
            "queues": ["emails"],
            "minReplicas": 2,
            "maxReplicas": 4,
            "template": {
                "image": "ghcr.io/example/tide:0.1.0",
                "serviceAccountName": "no-such-account",
            },
            "metrics": {"exporter": {"url": exporter.url}},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, pool)

    def failed_create() -> str | None:
        for event in cluster.core.list_namespaced_event(namespace).items:
            if event.reason == "FailedCreate" and event.involved_object.name.startswith(
                "unbuildable-workers"
            ):
                return str(event.message)
        return None

    message, _ = measure(failed_create, timeout=3 * REACT)

    def truthful() -> dict[str, Any] | None:
        status = (cluster.pool(namespace, "unbuildable") or {}).get("status") or {}
        says_why = [
            c
            for c in status.get("conditions") or []
            if c.get("status") == "False" and "no-such-account" in (c.get("message") or "")
        ]
        claims = status.get("replicas"), status.get("readyReplicas")
        return status if says_why and claims in ((0, 0), (0, None)) else None

    told, seconds = measure(truthful, timeout=3 * REACT)
    status = (cluster.pool(namespace, "unbuildable") or {}).get("status") or {}
    ok = report.record(
        "pods not created (FailedCreate) → status says 0 workers and why",
        ok=bool(message) and bool(told),
        seconds=seconds,
        bound=f"{REACT:g}",
        detail=f"ReplicaSet: {message or 'no FailedCreate seen'}; status replicas="
        f"{status.get('replicas')} ready={status.get('readyReplicas')}, "
        + " ".join(
            f"{c['type']}={c['status']}/{c.get('reason')}" for c in status.get("conditions") or []
        ),
    )
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "unbuildable")
    assert ok, status


def test_no_rbac_denials(
    cluster: Cluster, chart: Install, operator: Operator, report: Report
) -> None:
    log = operator.logs()
    in_log = len(DENIED.findall(log))
    tracebacks = log.count("Traceback")
    since = datetime.fromisoformat(report.facts["started"])
    entries = audit_entries(chart.namespace, since)
    if entries is None:
        audited = "no audit log"
        denied = 0
    else:
        refused = [e for e in entries if (e.get("responseStatus") or {}).get("code") == 403]
        denied = len(refused)
        audited = f"{denied} of {len(entries)} audited requests answered 403"
        if refused:
            audited += (
                " ("
                + ", ".join(f"{k} x{v}" for k, v in describe_requests(refused).most_common())
                + ")"
            )
        report.facts["operator_requests_by_verb"] = dict(describe_requests(entries))
        # Least privilege, as far as this run exercised the operator: what the chart's Role
        # grants that the operator never asked for (the unit suite holds the exact list).
        used = {
            (ref.get("apiGroup", ""), resource_of(ref), entry["verb"])
            for entry in entries
            if (ref := entry.get("objectRef")) and ref.get("resource")
        }
        unused = sorted(granted(cluster, chart.namespace) - used)
        report.facts["rbac_granted_not_used_in_run"] = [
            f"{verb} {group + '/' if group else ''}{resource}" for group, resource, verb in unused
        ]
        audited += f"; granted but not used in this run: {len(unused)}"
    ok = report.record(
        "RBAC denials of the operator (chart's Role)",
        ok=in_log == 0 and denied == 0 and tracebacks == 0,
        bound="0",
        detail=f"operator log: {in_log} x 403/Forbidden, {tracebacks} tracebacks over "
        f"{operator.starts} starts; audit log: {audited}",
    )
    assert ok, log[-5000:]
