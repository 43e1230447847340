"""The operator end to end: kopf in this loop, kmock as the API server, fake time.

Every test creates WorkerPools through the API (so kopf sees watch events as in a cluster),
drives the fake exporter's numbers, and waits on the API objects' state with a deadline in
loop time. ``looptime`` makes the polling intervals and windows pass instantly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kube_emulator import ADMIN, WORKERPOOLS, TideEmulator
from pool_harness import (
    DEPLOYMENTS,
    NS,
    PODS,
    FakeBusyProbe,
    FakeExporter,
    condition,
    deployment_body,
    events,
    eventually,
    obj,
    pod_body,
    pool_body,
    replicas,
)

from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import EXISTENCE_CHECK_SECONDS, INVALID_SPEC_RETRY, Runtime
from tide_operator.resources.deployments import DELETION_COST_ANNOTATION, TEMPLATE_HASH_ANNOTATION
from tide_operator.resources.spec import NAME_MESSAGE

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"


async def test_owned_pool_creates_its_deployment_and_reports_ready(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=0)
    await api.create(POOLS, pool_body("mail", exporter_url=exporter.url, minReplicas=1))

    deployment = await eventually(lambda: obj(emulator, DEPLOYMENTS, "mail-workers"))
    pool = obj(emulator, WORKERPOOLS, "mail")
    assert pool is not None
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["uid"] == pool["metadata"]["uid"]
    assert owner["controller"] is True
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:7] == [
        "worker",
        "-Q",
        "default",
        "-c",
        "1",
        "-n",
        "worker@$(POD_NAME)",
    ]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    assert deployment["spec"]["replicas"] == 1

    ready = await eventually(lambda: condition(emulator, "mail", "Ready"))
    assert ready["status"] == "True", ready
    status = obj(emulator, WORKERPOOLS, "mail")["status"]  # type: ignore[index]
    assert status["desiredReplicas"] == 1
    assert status["lastObservation"]["waiting"] == 0
    assert status["observedGeneration"] == pool["metadata"]["generation"]


async def test_burst_scales_up_within_one_polling_interval(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=0)
    await api.create(
        POOLS, pool_body("burst", exporter_url=exporter.url, minReplicas=1, maxReplicas=8)
    )
    await eventually(lambda: condition(emulator, "burst", "Ready"))
    loop = asyncio.get_running_loop()
    exporter.set("default", waiting=40, oldest=3.0)
    started = loop.time()
    await eventually(lambda: replicas(emulator, "burst-workers") == 8, timeout=30)
    # pollingInterval is 5 s: the next tick must see the burst and patch at once.
    assert loop.time() - started <= 5.0 + 1.0
    scaled = events(emulator, "ScaledUp")
    assert scaled
    assert "1→8" in scaled[-1]["message"]
    assert (
        operator.metrics.registry.get_sample_value(
            "tide_workerpool_scale_events_total",
            {"namespace": NS, "workerpool": "burst", "direction": "up"},
        )
        == 1.0
    )


async def test_drop_scales_down_after_window_idle_pods_marked_first(
    operator: Runtime,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
) -> None:
    exporter.set("default", waiting=3)
    await api.create(POOLS, pool_body("drop", exporter_url=exporter.url, maxReplicas=5))
    await eventually(lambda: replicas(emulator, "drop-workers") == 3)
    labels = obj(emulator, DEPLOYMENTS, "drop-workers")["spec"]["selector"]["matchLabels"]  # type: ignore[index]
    for name in ("drop-a", "drop-b", "drop-c"):
        await api.create(PODS_PATH, pod_body(name, labels=labels))
    probe.busy_by_host = {"worker@drop-a": 1, "worker@drop-b": 0, "worker@drop-c": 0}

    loop = asyncio.get_running_loop()
    exporter.set("default", waiting=0, inflight=1)
    dropped_at = loop.time()
    await eventually(lambda: replicas(emulator, "drop-workers") == 1, timeout=120)
    # The default scale-down window is 30 s: not a moment earlier.
    assert loop.time() - dropped_at >= 30 - 5
    # The busy pod was ranked above the idle ones before the replicas dropped.
    busy_pod = obj(emulator, PODS, "drop-a")
    assert busy_pod["metadata"]["annotations"][DELETION_COST_ANNOTATION] == "1"  # type: ignore[index]
    for idle in ("drop-b", "drop-c"):
        annotations = obj(emulator, PODS, idle)["metadata"].get("annotations") or {}  # type: ignore[index]
        assert annotations.get(DELETION_COST_ANNOTATION, "0") == "0"
    paths = [path for _, path in emulator.writes]
    mark = paths.index(f"{PODS_PATH}/drop-a")
    scale_down = max(i for i, p in enumerate(paths) if p.endswith("drop-workers/scale"))
    assert mark < scale_down
    assert ["worker@drop-a", "worker@drop-b", "worker@drop-c"] in probe.asked


async def test_adopted_deployment_is_scaled_and_never_deleted(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    await api.create(DEPLOYMENTS_PATH, deployment_body("legacy", replicas=2, labels={"app": "x"}))
    exporter.set("default", waiting=5)
    await api.create(
        POOLS,
        pool_body(
            "adopt", exporter_url=exporter.url, scaleTargetRef={"name": "legacy"}, maxReplicas=5
        ),
    )
    await eventually(lambda: replicas(emulator, "legacy") == 5)
    legacy = obj(emulator, DEPLOYMENTS, "legacy")
    assert legacy is not None
    assert "ownerReferences" not in legacy["metadata"]
    assert legacy["spec"]["template"]["spec"]["containers"][0]["image"] == "tide:test"

    await api._send("DELETE", f"{POOLS}/adopt")
    await eventually(lambda: obj(emulator, WORKERPOOLS, "adopt") is None)
    assert obj(emulator, DEPLOYMENTS, "legacy") is not None


async def test_update_rolls_the_template_and_delete_removes_the_deployment(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=1)
    await api.create(POOLS, pool_body("roll", exporter_url=exporter.url))
    first = await eventually(lambda: obj(emulator, DEPLOYMENTS, "roll-workers"))
    first_hash = first["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]

    await api.patch(f"{POOLS}/roll", {"spec": {"template": {"image": "tide:v2"}, "concurrency": 4}})

    def rolled() -> dict[str, object] | None:
        d = obj(emulator, DEPLOYMENTS, "roll-workers")
        containers = (d or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers")
        return d if containers and containers[0]["image"] == "tide:v2" else None

    deployment = await eventually(rolled)
    assert deployment["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] != first_hash  # type: ignore[index]
    assert "4" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[index]
    await eventually(
        lambda: (
            (c := condition(emulator, "roll", "Ready"))
            and c.get("observedGeneration")
            == obj(emulator, WORKERPOOLS, "roll")["metadata"]["generation"]
        )  # type: ignore[index]
    )

    await api._send("DELETE", f"{POOLS}/roll")
    await eventually(lambda: obj(emulator, WORKERPOOLS, "roll") is None)
    # The garbage collector follows the owner reference.
    await eventually(lambda: obj(emulator, DEPLOYMENTS, "roll-workers") is None)
    await eventually(
        lambda: (
            operator.metrics.registry.get_sample_value(
                "tide_workerpool_desired_replicas", {"namespace": NS, "workerpool": "roll"}
            )
            is None
        )
    )


async def test_metrics_unavailable_hold_then_fallback(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=2)
    await api.create(
        POOLS,
        pool_body(
            "blind",
            exporter_url=exporter.url,
            fallback={"failureThreshold": 3, "replicas": 4},
            maxReplicas=6,
        ),
    )
    await eventually(lambda: replicas(emulator, "blind-workers") == 2)
    exporter.down = True
    metrics = await eventually(
        lambda: (
            (c := condition(emulator, "blind", "MetricsAvailable")) and c["status"] == "False" and c
        )
    )
    assert metrics["reason"] == "MetricsUnavailable"
    assert "503" in metrics["message"]
    # The pool is still configured and its workers exist: Ready stays True, so Helm 4's
    # --wait (which waits on Ready) does not fail an upgrade over an exporter restart.
    assert (condition(emulator, "blind", "Ready") or {})["status"] == "True"
    # Held while below the threshold: a broken metric is not an empty queue.
    assert replicas(emulator, "blind-workers") == 2
    await eventually(lambda: replicas(emulator, "blind-workers") == 4)
    fallback = condition(emulator, "blind", "Fallback")
    assert fallback is not None
    assert fallback["status"] == "True"
    (warning,) = events(emulator, "MetricsUnavailable")  # once, not per poll
    assert warning["type"] == "Warning"
    assert warning["message"] == metrics["message"]
    assert (condition(emulator, "blind", "Ready") or {})["status"] == "True"
    assert (
        operator.metrics.registry.get_sample_value(
            "tide_workerpool_fallback_active", {"namespace": NS, "workerpool": "blind"}
        )
        == 1.0
    )

    exporter.down = False
    await eventually(
        lambda: (c := condition(emulator, "blind", "MetricsAvailable")) and c["status"] == "True"
    )


async def test_paused_pool_is_left_alone(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=50)
    await api.create(
        POOLS, pool_body("still", exporter_url=exporter.url, paused=True, minReplicas=1)
    )
    paused = await eventually(
        lambda: (c := condition(emulator, "still", "Paused")) and c["status"] == "True" and c
    )
    assert paused["reason"] == "PausedBySpec"
    loop = asyncio.get_running_loop()
    until = loop.time() + 20
    await eventually(lambda: loop.time() >= until)
    assert replicas(emulator, "still-workers") == 1
    await api.patch(f"{POOLS}/still", {"spec": {"paused": False}})
    await eventually(lambda: replicas(emulator, "still-workers") == 10)


BAD = "b" * 70


async def test_invalid_and_broken_pools_report_and_others_carry_on(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=2)
    # A template pool with a 70-character name, admitted by Tide's CRD before it refused
    # such names: a real cluster keeps it through the CRD's upgrade, and the model refuses
    # it. (A spec today's CRD refuses cannot be created at all: the emulator answers 422.)
    with emulator.crd_without(NAME_MESSAGE):
        await api.create(POOLS, pool_body(BAD, exporter_url=exporter.url))
    # A Deployment that does not exist.
    await api.create(
        POOLS, pool_body("lost", exporter_url=exporter.url, scaleTargetRef={"name": "nowhere"})
    )
    # An unreachable metrics URL.
    await api.create(
        POOLS,
        pool_body(
            "deaf",
            exporter_url=exporter.url,
            metrics={"prometheus": {"url": "http://127.0.0.1:9", "timeoutSeconds": 1}},
        ),
    )
    # A Deployment of the same name that the pool does not own.
    await api.create(
        DEPLOYMENTS_PATH, deployment_body("squat-workers", replicas=1, labels={"app": "s"})
    )
    await api.create(POOLS, pool_body("squat", exporter_url=exporter.url))
    await api.create(POOLS, pool_body("good", exporter_url=exporter.url))

    expected = {
        ("lost", "Ready"): "TargetNotFound",
        ("deaf", "MetricsAvailable"): "MetricsUnavailable",
        ("squat", "Ready"): "DeploymentNotOwned",
    }
    for (pool, type_), reason in expected.items():
        found = await eventually(
            lambda pool=pool, type_=type_: (
                (c := condition(emulator, pool, type_)) and c["status"] == "False" and c
            ),
            what=f"{pool} {type_}=False",
        )
        assert found["reason"] == reason, (pool, found)
    await eventually(lambda: replicas(emulator, "good-workers") == 2)
    squat = obj(emulator, DEPLOYMENTS, "squat-workers")
    assert squat is not None
    assert squat["spec"]["replicas"] == 1

    # The pool the model refuses: a real server validates a stored object again on every
    # write, its status's too, so Ready=False/InvalidSpec can never land on it. The Event
    # says why, once; the refused status write is not repeated every tick.
    def invalid_spec_events() -> list[dict[str, Any]]:
        return [e for e in events(emulator, "InvalidSpec") if e["involvedObject"]["name"] == BAD]

    said = await eventually(invalid_spec_events, what="the InvalidSpec Event")
    assert "63" in said[0]["message"], said
    loop = asyncio.get_running_loop()
    settle = loop.time() + 4 * INVALID_SPEC_RETRY
    await eventually(lambda: loop.time() >= settle, timeout=5 * INVALID_SPEC_RETRY)
    refused = [v for v in emulator.violations if f"/workerpools/{BAD}/status:" in v]
    assert len(refused) == 1, refused
    assert len(invalid_spec_events()) == 1
    assert condition(emulator, BAD, "Ready") is None
    # Seen and expected: the one write the operator could not know the server refuses.
    emulator.violations[:] = [v for v in emulator.violations if v not in refused]


async def test_conflicts_are_retried(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=0)
    await api.create(POOLS, pool_body("race", exporter_url=exporter.url, minReplicas=1))
    await eventually(lambda: replicas(emulator, "race-workers") == 1)
    emulator.faults[("PATCH", "race-workers/scale")] = 2
    exporter.set("default", waiting=3)
    await eventually(lambda: replicas(emulator, "race-workers") == 3)
    attempts = [p for m, p in emulator.writes if m == "PATCH" and p.endswith("race-workers/scale")]
    assert len(attempts) == 3
    assert emulator.faults[("PATCH", "race-workers/scale")] == 0


async def test_steady_state_makes_no_requests_beyond_the_watches(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=2)
    exporter.set("reports", waiting=1)
    labels = {"app": "reports"}
    await api.create(DEPLOYMENTS_PATH, deployment_body("reports-worker", replicas=1, labels=labels))
    await api.create(POOLS, pool_body("calm", exporter_url=exporter.url))
    await api.create(
        POOLS,
        pool_body(
            "adopted",
            exporter_url=exporter.url,
            queues=["reports"],
            scaleTargetRef={
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "reports-worker",
            },
        ),
    )
    await eventually(lambda: replicas(emulator, "calm-workers") == 2)
    await eventually(lambda: condition(emulator, "calm", "Ready"))
    await eventually(lambda: condition(emulator, "adopted", "Ready"))
    loop = asyncio.get_running_loop()
    settle = loop.time() + 10
    await eventually(lambda: loop.time() >= settle)
    before_writes, before_log = len(emulator.writes), len(emulator.log)
    # Twelve ticks of each pool: the Deployments come from the watch, nothing is written.
    until = loop.time() + 60
    await eventually(lambda: loop.time() >= until)
    assert emulator.writes[before_writes:] == []
    made = [
        f"{e.method} {e.path}"
        for e in emulator.log[before_log:]
        if e.user != ADMIN and (e.address is None or e.address.verb != "watch")
    ]
    assert made == []
    # A change is still seen at once, and written once (the next tick reads the size it set).
    exporter.set("default", waiting=4)
    await eventually(lambda: replicas(emulator, "calm-workers") == 4)
    until = loop.time() + 30
    await eventually(lambda: loop.time() >= until)
    scales = [p for m, p in emulator.writes[before_writes:] if p.endswith("/scale")]
    assert scales == [f"{DEPLOYMENTS_PATH}/calm-workers/scale"]
    assert len(events(emulator, "Activated")) == 1  # 0 -> 2 at the start
    assert len(events(emulator, "ScaledUp")) == 1  # 2 -> 4 now, once


async def test_a_deletion_the_watch_missed_is_found_and_repaired(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    """kopf re-lists after a long watch outage and never reports what was deleted in
    between; the pools' periodic check (one LIST per namespace) finds it."""
    exporter.set("default", waiting=2)
    await api.create(POOLS, pool_body("lost", exporter_url=exporter.url))
    await eventually(lambda: replicas(emulator, "lost-workers") == 2)
    await eventually(lambda: condition(emulator, "lost", "Ready"))
    first = obj(emulator, DEPLOYMENTS, "lost-workers")
    assert first is not None
    # Gone from the server with no watch event: as if deleted while the watch was down.
    emulator.objects[DEPLOYMENTS, NS, "lost-workers"].delete()
    assert obj(emulator, DEPLOYMENTS, "lost-workers") is None
    loop = asyncio.get_running_loop()
    started = loop.time()
    again = await eventually(
        lambda: obj(emulator, DEPLOYMENTS, "lost-workers"),
        timeout=EXISTENCE_CHECK_SECONDS + 60,
    )
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert loop.time() - started <= EXISTENCE_CHECK_SECONDS + 2 * 5
    await eventually(lambda: replicas(emulator, "lost-workers") == 2)


async def test_unsafe_configuration_is_warned_on_status(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=1)
    await api.create(
        POOLS,
        pool_body(
            "risky",
            exporter_url=exporter.url,
            shutdown={"gracePeriodSeconds": 30, "longestTaskSeconds": 600},
            worker={"prefetchMultiplier": 4},
        ),
    )
    safe = await eventually(lambda: condition(emulator, "risky", "SafeScaleIn"))
    assert safe["status"] == "False"
    assert safe["reason"] == "UnsafeConfiguration"
    assert "longestTaskSeconds" in safe["message"]
    assert "prefetchMultiplier" in safe["message"]
    assert events(emulator, "UnsafeConfiguration")


async def test_owned_pool_runs_a_teams_app_from_its_pod_template(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("orders", waiting=0)
    template = {
        "image": "registry.example.com/stockapp:1.4.2",
        "app": "stockapp",
        "podSecurityContext": {"runAsUser": 1000},
        "securityContext": {"readOnlyRootFilesystem": False},
        "initContainers": [{"name": "migrate-check", "image": "registry.example.com/s:1"}],
        "volumes": [{"name": "config", "configMap": {"name": "stockapp"}}],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/stockapp"}],
    }
    await api.create(
        POOLS,
        pool_body(
            "stock", exporter_url=exporter.url, queues=["orders"], minReplicas=1, template=template
        ),
    )
    deployment = await eventually(lambda: obj(emulator, DEPLOYMENTS, "stock-workers"))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["celery"]
    assert container["args"][:5] == ["-A", "stockapp", "worker", "-Q", "orders"]
    assert "celery -A stockapp inspect ping" in container["livenessProbe"]["exec"]["command"][2]
    assert pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    assert pod["initContainers"][0]["name"] == "migrate-check"
    assert {"name": "config", "mountPath": "/etc/stockapp"} in container["volumeMounts"]
    ready = await eventually(lambda: condition(emulator, "stock", "Ready"))
    assert ready["status"] == "True", ready


async def test_adopted_deployment_is_checked_for_what_scale_in_needs(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    # The team's Deployment as it runs today: Kubernetes' default 30 s grace, Celery's
    # default node name given explicitly.
    legacy = deployment_body("stock-worker", replicas=1, labels={"app": "stock"})
    legacy["spec"]["template"]["spec"]["containers"][0]["args"] = [
        "celery", "-A", "stockapp", "worker", "-Q", "orders", "-n", "celery@%h",
    ]  # fmt: skip
    await api.create(DEPLOYMENTS_PATH, legacy)
    exporter.set("orders", waiting=0)
    await api.create(
        POOLS,
        pool_body(
            "adopted",
            exporter_url=exporter.url,
            queues=["orders"],
            scaleTargetRef={"name": "stock-worker"},
            minReplicas=1,
            shutdown={"gracePeriodSeconds": 600},
        ),
    )
    safe = await eventually(lambda: condition(emulator, "adopted", "SafeScaleIn"))
    assert safe["status"] == "False"
    assert "terminationGracePeriodSeconds (30)" in safe["message"]
    assert "shutdown.gracePeriodSeconds (600)" in safe["message"]
    assert "'celery@%h'" in safe["message"]
    assert events(emulator, "UnsafeConfiguration")

    # The team fixes its Deployment; the next look says so, and nothing else was touched.
    await api.patch(
        f"{DEPLOYMENTS_PATH}/stock-worker",
        {
            "spec": {
                "template": {
                    "spec": {
                        "terminationGracePeriodSeconds": 600,
                        "containers": [
                            {
                                "name": "worker",
                                "image": "tide:test",
                                "args": ["celery", "-A", "stockapp", "worker", "-n", "worker@%h"],
                            }
                        ],
                    }
                }
            }
        },
    )
    await eventually(
        lambda: (c := condition(emulator, "adopted", "SafeScaleIn")) and c["status"] == "True"
    )
    assert obj(emulator, DEPLOYMENTS, "stock-worker")["spec"]["replicas"] == 1  # type: ignore[index]
