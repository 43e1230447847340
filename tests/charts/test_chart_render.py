"""What the chart renders, scenario by scenario: conventions, components and their wiring."""

from __future__ import annotations

import re

import pytest
import yaml
from chart_render import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Render,
    helm,
    load_yaml,
    pod_specs,
    template,
    worker_deployments,
)

SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}
SECRET_ENV = {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DJANGO_SECRET_KEY"}
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s$]+@")


def test_helm_lint_strict_with_every_scenario() -> None:
    for scenario in SCENARIOS:
        result = helm(
            "lint",
            "--strict",
            str(CHART),
            "--values",
            str(CHART / "ci" / f"{scenario}-values.yaml"),
            check=False,
        )
        assert result.returncode == 0, f"{scenario}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_labelled_and_named_within_limits(
    rendered: dict[str, Render], scenario: str
) -> None:
    for obj in rendered[scenario].objects:
        meta = obj["metadata"]
        labels = meta.get("labels", {})
        where = f"{obj['kind']}/{meta['name']}"
        assert len(meta["name"]) <= 63, where
        for key in (*SELECTOR_KEYS, "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            assert key in labels, f"{where} lacks {key}"
        if obj["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert meta.get("namespace"), f"{where} has no namespace"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_are_the_stable_labels_only(rendered: dict[str, Render], scenario: str) -> None:
    # A Deployment's selector is immutable: only labels that never change may be in it,
    # and the pod template must carry them.
    for obj in rendered[scenario].objects:
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        selector = obj["spec"]["selector"]["matchLabels"]
        assert set(selector) == SELECTOR_KEYS, obj["metadata"]["name"]
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
    for service in rendered[scenario].kind("Service"):
        assert set(service["spec"]["selector"]) == SELECTOR_KEYS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tide_pods_roll_on_config_changes(rendered: dict[str, Render], scenario: str) -> None:
    render = rendered[scenario]
    for obj in render.objects:
        if obj["kind"] in {"Deployment", "Job"}:
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert {"checksum/config", "checksum/secret"} <= annotations.keys()
    for pool in render.kind("WorkerPool"):
        template = pool["spec"].get("template")
        if template is None or {"app", "command", "args"} & template.keys():
            continue  # adopted, or a team's own app: Tide's configuration is not theirs
        assert "checksum/config" in template["annotations"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_reach_pods_only_by_reference(rendered: dict[str, Render], scenario: str) -> None:
    render = rendered[scenario]
    containers = [
        c
        for obj in render.objects
        for spec in pod_specs(obj)
        for c in spec.get("initContainers", []) + spec["containers"]
    ]
    containers += [
        pool["spec"]["template"] for pool in render.kind("WorkerPool") if "template" in pool["spec"]
    ]
    for container in containers:
        for env in container.get("env", []):
            value = env.get("value", "")
            assert not URL_WITH_PASSWORD.search(value), env
            if env["name"] in SECRET_ENV and "value" in env:
                # A composed URL takes its password from a secretKeyRef variable.
                assert "$(TIDE_" in value or not re.search(r"://[^/]*@", value), env
    for config in render.kind("ConfigMap"):
        for key in config.get("data", {}):
            assert key not in SECRET_ENV | {"FLOWER_BASIC_AUTH"}, key


def test_generated_secret_only_without_existing_secrets(rendered: dict[str, Render]) -> None:
    # The default install generates the key and passwords; with every secret supplied
    # nothing is generated (manifests/ must be reproducible).
    default = rendered["default"].get("Secret", RELEASE)["data"]
    assert {"DJANGO_SECRET_KEY", "postgres-password", "redis-password"} <= default.keys()
    assert {"FLOWER_BASIC_AUTH", "FLOWER_COOKIE_SECRET"} <= default.keys()
    assert rendered["manifests"].kind("Secret") == []
    assert rendered["default"].get("Secret", RELEASE)["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }


def test_api_probes_service_and_ingress(rendered: dict[str, Render]) -> None:
    prod = rendered["production"]
    api = prod.named("Deployment", "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["api"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["spec"]["replicas"] == 3
    ingress = prod.named("Ingress", "api")
    paths = {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert "/metrics" not in paths
    assert "/" not in paths
    config = prod.get("ConfigMap", RELEASE)["data"]
    # TLS at the Ingress turns Django's HTTPS redirect on and trusts the host for CSRF.
    assert config["DJANGO_SECURE_SSL_REDIRECT"] == "true"
    assert "https://tide.example.com" in config["DJANGO_CSRF_TRUSTED_ORIGINS"]
    assert "tide.example.com" in config["DJANGO_ALLOWED_HOSTS"].split(",")
    assert rendered["default"].get("ConfigMap", RELEASE)["data"]["DJANGO_SECURE_SSL_REDIRECT"] == (
        "false"
    )
    assert prod.named("PodDisruptionBudget", "api")["spec"]["minAvailable"] == 1


def test_queues_include_every_pool_queue(rendered: dict[str, Render]) -> None:
    queues = rendered["production"].get("ConfigMap", RELEASE)["data"]["TIDE_QUEUES"]
    assert queues.split(",") == ["default", "reports", "emails"]


def test_beat_flower_and_exporter_run_one_replica(rendered: dict[str, Render]) -> None:
    render = rendered["default"]
    for component in ("beat", "flower", "exporter"):
        deployment = render.named("Deployment", component)
        assert deployment["spec"]["replicas"] == 1, component
    for component in ("beat", "flower"):
        # Recreate: a rollout must never run two of them at once.
        assert render.named("Deployment", component)["spec"]["strategy"]["type"] == "Recreate"
    beat = render.named("Deployment", "beat")["spec"]["template"]["spec"]["containers"][0]
    # The schedule is read from the database (DatabaseScheduler), not a file.
    assert beat["args"] == ["beat"]


def test_operator_runs_two_replicas_that_elect_one_with_a_lease(
    rendered: dict[str, Render],
) -> None:
    render = rendered["default"]
    deployment = render.named("Deployment", "operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # A rollout starts the new pod before stopping an old one (which releases the Lease).
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    )
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TIDE_OPERATOR_LEASE_DURATION"]["value"] == "8"
    assert env["TIDE_OPERATOR_LEASE_RENEW"]["value"] == "2"
    (pdb,) = [
        p for p in render.kind("PodDisruptionBudget") if p["metadata"]["name"].endswith("operator")
    ]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    # One replica: no PodDisruptionBudget (a drain could never proceed), no anti-affinity.
    single = template("--set", "operator.replicas=1")
    assert not [
        o
        for o in single
        if o["kind"] == "PodDisruptionBudget" and "operator" in o["metadata"]["name"]
    ]
    (alone,) = [
        o for o in single if o["kind"] == "Deployment" and o["metadata"]["name"] == "tide-operator"
    ]
    assert "affinity" not in alone["spec"]["template"]["spec"]


def test_flower_forgets_workers_the_operator_scaled_in(rendered: dict[str, Render]) -> None:
    # Scaled-in workers never come back under their names: Flower drops them after 5 min
    # instead of listing each as Offline forever; 0 keeps Flower's own behaviour.
    flower = rendered["default"].named("Deployment", "flower")
    args = flower["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--purge_offline_workers=300" in args
    kept = template("--set", "flower.purgeOfflineWorkersSeconds=0")
    (deployment,) = [
        o for o in kept if o["kind"] == "Deployment" and o["metadata"]["name"] == "tide-flower"
    ]
    assert not any(
        a.startswith("--purge_offline_workers")
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_flower_auth_from_a_secret_and_metrics_off_the_ingress(
    rendered: dict[str, Render],
) -> None:
    prod = rendered["production"]
    flower = prod.named("Deployment", "flower")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in flower["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {
        "name": "tide-flower",
        "key": "basic-auth",
    }
    assert env["FLOWER_COOKIE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == RELEASE
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    ingress = prod.named("Ingress", "flower")
    paths = {
        (p["path"], p["pathType"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]
    }
    assert ("/", "Exact") in paths
    assert all(not path.startswith("/metrics") for path, _ in paths)
    assert all(kind != "Prefix" or path != "/" for path, kind in paths)


def test_migrations_hook_or_plain_job(rendered: dict[str, Render]) -> None:
    hook = rendered["default"].named("Job", "migrate")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert hook["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    (plain,) = rendered["gitops"].kind("Job")
    assert "helm.sh/hook" not in plain["metadata"]["annotations"]
    # Named after the image: a new image is a new Job, since a Job's template is immutable.
    assert re.fullmatch(r"tide-migrate-[0-9a-f]{8}", plain["metadata"]["name"])
    api = rendered["default"].named("Deployment", "api")["spec"]["template"]["spec"]
    (init,) = api["initContainers"]
    assert init["name"] == "wait-for-migrations"
    assert "migrate --check" in init["args"][0]


def test_workers_of_tides_app_wait_for_migrations(rendered: dict[str, Render]) -> None:
    # The values promise it for worker pods too: the chart puts the same init container in
    # the pools' template, and the operator's Deployment carries it (with the /tmp it uses).
    api = rendered["default"].named("Deployment", "api")["spec"]["template"]["spec"]
    (deployment,) = worker_deployments(rendered["default"])
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init == api["initContainers"][0]
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in init["volumeMounts"]} <= volumes
    # Off with the migrations, or with waitForMigrations.
    for off in ("migrations.enabled=false", "migrations.waitForMigrations=false"):
        pools = [o for o in template("--set", off) if o["kind"] == "WorkerPool"]
        assert pools
        assert all("initContainers" not in p["spec"]["template"] for p in pools), off
    # A team's own app pool gets nothing of Tide's: no wait for Tide's migrations.
    for pool in rendered["platform-only"].kind("WorkerPool"):
        assert "initContainers" not in pool["spec"].get("template", {}), pool["metadata"]["name"]


MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_monitoring_objects_only_where_their_crds_are() -> None:
    values = ("--values", str(CHART / "ci" / "production-values.yaml"))
    only_pools = ("--api-versions", "tide.dev/v1alpha1/WorkerPool")

    def kinds(*args: str) -> set[str]:
        out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        return {o["kind"] for o in yaml.safe_load_all(out.stdout) if o} & MONITORING_KINDS

    # With the Prometheus Operator's API: rendered as asked.
    assert kinds(*values, *only_pools, "--api-versions", "monitoring.coreos.com/v1") == {
        "ServiceMonitor",
        "PrometheusRule",
    }
    # Without it, they would fail the whole install: left out, and the notes say why.
    assert kinds(*values, *only_pools) == set()
    notes = helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *values
    ).stdout
    assert "monitoring.coreos.com/v1" in notes
    # Forced, for renderers that know better than the (absent) cluster.
    assert kinds(*values, *only_pools, "--set", "monitoring.assumeCrds=true") == {
        "ServiceMonitor",
        "PrometheusRule",
    }


def operator_roles(render: Render, kind: str) -> list[dict]:
    """The operator's roles for its pools (not the one for its Lease)."""
    return [
        r
        for r in render.kind(kind)
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
        and not r["metadata"]["name"].endswith("-lease")
    ]


def lease_role(render: Render) -> dict:
    (role,) = [r for r in render.kind("Role") if r["metadata"]["name"].endswith("operator-lease")]
    return role


LEASE_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["tide-operator"],
        "verbs": ["get", "update"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]


def test_operator_rbac_follows_its_scope(rendered: dict[str, Render]) -> None:
    def args(render: Render) -> list[str]:
        deployment = render.named("Deployment", "operator")
        return deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    # scope=namespace (default): a Role in the release namespace, no cluster-wide grant.
    default = rendered["default"]
    assert args(default) == ["operator", "--namespace", NAMESPACE]
    assert operator_roles(default, "ClusterRole") == []
    assert default.kind("ClusterRoleBinding") == []
    assert [r["metadata"]["namespace"] for r in operator_roles(default, "Role")] == [NAMESPACE]
    # Two watched namespaces: a Role and RoleBinding in each.
    gitops = rendered["gitops"]
    assert args(gitops) == ["operator", "--namespace", "tide", "--namespace", "tide-batch"]
    assert sorted(
        r["metadata"]["namespace"]
        for r in gitops.kind("RoleBinding")
        if not r["metadata"]["name"].endswith("-lease")
    ) == ["tide", "tide-batch"]
    # In every scope, the Lease's Role in the release namespace: that one Lease by name.
    for render in (default, gitops, rendered["production"]):
        role = lease_role(render)
        assert (
            role["metadata"]["namespace"]
            == render.named("Deployment", "operator")["metadata"]["namespace"]
        )
        assert role["rules"] == LEASE_RULES
        (binding,) = [
            b
            for b in render.kind("RoleBinding")
            if b["metadata"]["name"] == role["metadata"]["name"]
        ]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"][0]["name"] == "tide-operator"
    # scope=cluster: one ClusterRole with the Role's rules, and --all-namespaces.
    prod = rendered["production"]
    assert args(prod) == ["operator", "--all-namespaces"]
    (cluster_role,) = operator_roles(prod, "ClusterRole")
    (role,) = operator_roles(default, "Role")
    assert cluster_role["rules"] == role["rules"]
    for render in (default, gitops, prod):
        for role in render.kind("Role") + render.kind("ClusterRole"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"], rule
                assert "*" not in rule["resources"], rule
                # Least privilege: nothing may read Secrets, the operator deletes nothing.
                assert "secrets" not in rule["resources"]
                if role["metadata"]["labels"]["app.kubernetes.io/component"] == "operator":
                    assert not {"delete", "deletecollection"} & set(rule["verbs"]), rule
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"workerpools", "workerpools/status", "deployments", "deployments/scale"} <= resources
    operator_pod = prod.named("Deployment", "operator")["spec"]["template"]["spec"]
    assert operator_pod["automountServiceAccountToken"] is True
    assert operator_pod["serviceAccountName"] == "tide-operator"


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def test_workerpools_join_the_built_in_user_roles(rendered: dict[str, Render]) -> None:
    default = rendered["default"]
    aggregated = {
        r["metadata"]["name"]: r
        for r in default.kind("ClusterRole")
        if any(k.startswith(AGGREGATE) for k in r["metadata"]["labels"])
    }
    assert set(aggregated) == {f"workerpools.tide.dev-{n}" for n in ("view", "edit", "admin")}

    def holds(role: str) -> set[tuple[str, str, str]]:
        # What holders of the built-in role get from the chart (view < edit < admin).
        return {
            (group, resource, verb)
            for r in aggregated.values()
            if r["metadata"]["labels"].get(AGGREGATE + role) == "true"
            for rule in r["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }

    assert ("tide.dev", "workerpools", "list") in holds("view")
    assert ("tide.dev", "workerpools", "create") not in holds("view")
    assert ("tide.dev", "workerpools", "create") in holds("edit")
    assert ("tide.dev", "workerpools", "delete") in holds("edit")
    assert holds("view") <= holds("edit") <= holds("admin")
    # A namespace admin can grant the operator's Role only holding all of it: what the
    # built-in admin role lacks (WorkerPools, their status, creating Events) comes from here.
    (role,) = operator_roles(default, "Role")
    for rule in role["rules"] + lease_role(default)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                if group in ("tide.dev", "coordination.k8s.io") or resource == "events":
                    for verb in rule["verbs"]:
                        assert (group, resource, verb) in holds("admin"), (resource, verb)
    # Leases to admin only: whoever may write one may take over any leader election.
    assert not {t for t in holds("edit") if t[1] == "leases"}
    # They are cluster-scoped and belong with the CRD: without it, none.
    without = template("--set", "crds.enabled=false")
    assert not [o for o in without if o["kind"] == "ClusterRole"]


# Kinds a namespace admin cannot create.
CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Namespace",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


def test_a_namespace_admin_can_install_it() -> None:
    # With the CRD installed apart (manifests/crds/), namespace scope renders only objects
    # of the release namespace.
    objects = template("--set", "crds.enabled=false")
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["kind"] not in CLUSTER_SCOPED, where
        assert obj["metadata"].get("namespace") == NAMESPACE, where


def test_the_operator_docs_state_the_charts_rbac(rendered: dict[str, Render]) -> None:
    # docs/operator.md's RBAC table and the chart's Role say the same thing.
    text = (CHART.parents[1] / "docs" / "operator.md").read_text()
    section = text.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        groups = [g.strip("` ").replace('""', "") for g in cells[0].split(",")]
        resources = [r.strip("` ") for r in cells[1].split(",")]
        verbs = [v.strip() for v in cells[2].split(",")]
        documented |= {(g, r, v) for g in groups for r in resources for v in verbs}
    (role,) = operator_roles(rendered["default"], "Role")
    granted = {
        (g, r, v)
        for rule in role["rules"] + lease_role(rendered["default"])["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert documented == granted


def test_crd_comes_from_the_operator_file_with_keep(rendered: dict[str, Render]) -> None:
    source = load_yaml(CHART / "files" / "crds" / "workerpools.tide.dev.yaml")
    (crd,) = rendered["default"].kind("CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert rendered["gitops"].kind("CustomResourceDefinition") == []
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        "tide.dev",
        "WorkerPool",
        "workerpools",
    )
    assert "wp" in names["shortNames"]


def test_crd_without_keep_has_no_resource_policy() -> None:
    (crd,) = [
        o
        for o in template("--set", "crds.keep=false", "--show-only", "templates/crd.yaml")
        if o["kind"] == "CustomResourceDefinition"
    ]
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_workerpools_wait_for_their_api_on_first_install() -> None:
    # Helm cannot create a custom resource with its CRD in one install: without the API
    # the pools are left for the next upgrade (the notes say so).
    objects = template(api_versions=False)
    assert [o for o in objects if o["kind"] == "WorkerPool"] == []
    objects = template("--set", "crds.enabled=false", api_versions=False)
    assert [o["kind"] for o in objects].count("WorkerPool") == 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_workerpools_are_valid_for_the_operator(rendered: dict[str, Render], scenario: str) -> None:
    # The operator's own model (strict: unknown fields refused) parses every rendered pool,
    # and builds a worker Deployment from each that has a template (an adopted one has its own).
    deployments = worker_deployments(rendered[scenario])
    pools = rendered[scenario].kind("WorkerPool")
    assert len(deployments) == len([p for p in pools if "template" in p["spec"]])


def test_workerpool_fields_from_values(rendered: dict[str, Render]) -> None:
    prod = rendered["production"]
    default_pool = prod.get("WorkerPool", "tide-default")["spec"]
    assert default_pool["queues"] == ["default", "emails"]
    assert default_pool["fallback"] == {"failureThreshold": 3, "replicas": 4}
    assert default_pool["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    # No metrics source named: the chart default (Prometheus in this scenario), kept to
    # this release's exporter by the namespace label the Prometheus Operator adds.
    assert default_pool["metrics"] == {
        "prometheus": {
            "url": "http://prometheus-operated.monitoring.svc:9090",
            "selector": 'namespace="tide"',
        }
    }
    # The grace period covers the longest task (900 s) plus time to stop.
    assert default_pool["shutdown"] == {"gracePeriodSeconds": 930, "longestTaskSeconds": 900}
    template_ = default_pool["template"]
    assert template_["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert template_["imagePullSecrets"] == [{"name": "regcred"}]
    assert template_["resources"]["limits"]["memory"] == "1Gi"
    reports = prod.get("WorkerPool", "tide-reports")["spec"]
    assert reports["metrics"] == {"exporter": {"url": "http://tide-exporter.tide.svc:9808/metrics"}}
    assert reports["shutdown"]["gracePeriodSeconds"] == 1200
    # The pool's template is merged over the chart's (maps key by key).
    assert reports["template"]["nodeSelector"] == {"kubernetes.io/os": "linux", "workload": "batch"}
    default = rendered["default"].get("WorkerPool", "tide-default")["spec"]
    assert default["metrics"] == {"exporter": {"url": "http://tide-exporter.tide.svc:9808/metrics"}}
    assert rendered["rabbitmq"].get("WorkerPool", "tide-cpu")["spec"]["paused"] is True


def test_rabbitmq_broker_and_result_backend_from_secrets(rendered: dict[str, Render]) -> None:
    render = rendered["rabbitmq"]
    exporter = render.named("Deployment", "exporter")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in exporter["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tide-rabbitmq",
        "key": "amqp-url",
    }
    assert env["CELERY_RESULT_BACKEND"]["valueFrom"]["secretKeyRef"]["name"] == "tide-results"
    assert env["TIDE_RABBITMQ_MANAGEMENT_URL"]["valueFrom"]["secretKeyRef"]["key"] == (
        "management-url"
    )
    assert [s["metadata"]["name"] for s in render.kind("StatefulSet")] == ["tide-postgresql"]


def test_bundled_services_compose_urls_from_secret_passwords(rendered: dict[str, Render]) -> None:
    render = rendered["default"]
    api = render.named("Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
    env = [e["name"] for e in api["env"]]
    # $(VAR) expansion needs the password variable defined before the URL.
    assert env.index("TIDE_POSTGRES_PASSWORD") < env.index("DATABASE_URL")
    assert env.index("TIDE_REDIS_PASSWORD") < env.index("CELERY_BROKER_URL")
    by_name = {e["name"]: e for e in api["env"]}
    assert by_name["DATABASE_URL"]["value"] == (
        "postgres://tide:$(TIDE_POSTGRES_PASSWORD)@tide-postgresql:5432/tide"
    )
    for name in ("redis", "postgresql"):
        statefulset = render.named("StatefulSet", name)
        assert statefulset["spec"]["replicas"] == 1
        assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_network_policies_cover_every_component(rendered: dict[str, Render]) -> None:
    prod = rendered["production"]
    covered = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in prod.kind("NetworkPolicy")
    }
    components = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in prod.objects
        if o["kind"] in {"Deployment", "StatefulSet", "Job"}
    }
    assert components | {"worker"} <= covered
    metrics_only = prod.named("NetworkPolicy", "exporter")["spec"]["ingress"][0]["from"]
    assert metrics_only == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert prod.named("NetworkPolicy", "beat")["spec"]["ingress"] == []
    # On by default: the bundled services admit only the release's own pods.
    redis = rendered["default"].named("NetworkPolicy", "redis")["spec"]["ingress"][0]["from"]
    assert redis == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}}]


def test_monitors_for_every_metrics_endpoint(rendered: dict[str, Render]) -> None:
    expected = {"tide-api", "tide-exporter", "tide-operator", "tide-flower"}
    prod = rendered["production"]
    assert {m["metadata"]["name"] for m in prod.kind("ServiceMonitor")} == expected
    for monitor in prod.kind("ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    rabbit = rendered["rabbitmq"]
    assert {m["metadata"]["name"] for m in rabbit.kind("PodMonitor")} == expected
    assert rabbit.kind("ServiceMonitor") == []
    # The operator's series carry each pool's namespace: only its scrape honours labels
    # (elsewhere a target's own labels must not override Prometheus' target labels).
    for monitors, endpoints in (
        (prod.kind("ServiceMonitor"), "endpoints"),
        (rabbit.kind("PodMonitor"), "podMetricsEndpoints"),
    ):
        honoured = {
            m["metadata"]["name"] for m in monitors if m["spec"][endpoints][0].get("honorLabels")
        }
        assert honoured == {"tide-operator"}
    dashboards = prod.kind("ConfigMap")
    labelled = [c for c in dashboards if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(next(iter(c["data"])) for c in labelled) == [
        "tide-autoscaler.json",
        "tide-overview.json",
    ]


def test_helm_test_pod_checks_readyz(rendered: dict[str, Render]) -> None:
    (pod,) = rendered["default"].kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/readyz" in pod["spec"]["containers"][0]["args"][0]
    assert rendered["gitops"].kind("Pod") == []


def test_notes_tell_how_to_reach_api_flower_and_grafana() -> None:
    result = helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--set",
        "monitoring.dashboards.enabled=true",
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/tide-api" in notes
    assert "port-forward svc/tide-flower" in notes
    assert "FLOWER_BASIC_AUTH" in notes
    assert "/d/tide-overview/" in notes
    assert "helm upgrade" in notes  # the pools wait for the next upgrade


@pytest.mark.parametrize(
    ("values", "selector"),
    [
        ((), 'namespace="tide"'),
        (
            ("--set-string", 'monitoring.prometheusSelector=job="tide-exporter"'),
            'job="tide-exporter"',
        ),
        (("--set-string", "monitoring.prometheusSelector="), None),
    ],
    ids=["release-namespace", "own", "none"],
)
def test_prometheus_pools_select_their_release(
    values: tuple[str, ...], selector: str | None
) -> None:
    objects = template("--set", "workerPoolDefaults.metricsSource=prometheus", *values)
    (pool,) = [o for o in objects if o["kind"] == "WorkerPool"]
    assert pool["spec"]["metrics"]["prometheus"].get("selector") == selector
