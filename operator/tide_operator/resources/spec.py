"""The WorkerPool resource (``tide.dev/v1alpha1``) as frozen pydantic models.

These models are the single source of truth for the resource's shape: ``crd.py`` generates
the CRD's ``openAPIV3Schema`` from them (field names, types, bounds, enums, descriptions,
and the CEL rules declared here in ``x-kubernetes-validations``), and the operator parses
every object it sees through them. The model validators restate the CEL rules in Python,
so an object that somehow bypassed the API server (an old CRD, local mode reading a file)
is refused the same way; the CRD tests evaluate both on the same examples.

Field names follow HorizontalPodAutoscaler and KEDA where those have a word for it
(``minReplicas``, ``scaleTargetRef``, ``behavior``, ``fallback``, ``cooldownPeriod``,
``pollingInterval``). The scaling part is handed to the policy by ``to_policy_config()``;
``behavior`` and ``fallback`` *are* the policy's own models, so the two cannot drift.

Nothing here performs I/O or imports kopf or an HTTP client (an import-linter contract
enforces it): ``WorkerPool`` is a plain value built from an object's metadata and spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from tide_operator.core.policy import Behavior, Fallback, Forecast, PolicyConfig

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "MAX_OWNED_NAME",
    "NAME_MESSAGE",
    "NAME_RULE",
    "PLURAL",
    "SHORT_NAME",
    "SINGULAR",
    "VERSION",
    "Condition",
    "ExporterMetrics",
    "LastObservation",
    "MetricsSpec",
    "PrometheusMetrics",
    "PrometheusQueries",
    "ScaleTargetRef",
    "ShutdownSpec",
    "WorkerPool",
    "WorkerPoolSpec",
    "WorkerPoolStatus",
    "WorkerSettings",
    "WorkerTemplate",
    "WorkersSeen",
]

GROUP: Final = "tide.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "WorkerPool"
PLURAL: Final = "workerpools"
SINGULAR: Final = "workerpool"
SHORT_NAME: Final = "wp"

# Defaults that the CEL rules restate: a rule runs on what the user wrote, before any
# defaulting in a client that skipped the API server, so it spells the default out.
DEFAULT_MIN_REPLICAS: Final = 0
DEFAULT_MAX_REPLICAS: Final = 10
DEFAULT_POLLING_INTERVAL: Final = 5.0
DEFAULT_MAX_WAIT: Final = 60.0
# staleAfterSeconds, when not set, follows pollingInterval: three polls, and never less than
# 30 s (an exporter scrape or a Prometheus evaluation can lag a poll or two).
MIN_STALE_AFTER: Final = 30.0
STALE_AFTER_POLLS: Final = 3

# A pool with a template labels its Deployment and pods ``tide.dev/workerpool=<name>``, and
# a label value is at most 63 characters: a longer name (a custom resource may have 253)
# could never get its Deployment. The CRD refuses it with this rule, at the root, where CEL
# may read metadata.name; ``WorkerPool.from_body`` says the same for anything that got past.
MAX_OWNED_NAME: Final = 63
NAME_RULE: Final = f"!has(self.spec.template) || size(self.metadata.name) <= {MAX_OWNED_NAME}"
NAME_MESSAGE: Final = (
    f"metadata.name must be at most {MAX_OWNED_NAME} characters for a pool with a template: "
    "it is the value of the tide.dev/workerpool label on the pool's Deployment and pods"
)

_URL_PATTERN: Final = r"^https?://[^\s]+$"


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """``x-kubernetes-validations`` for a model's JSON schema: (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Model(BaseModel):
    """Frozen, camelCase-aliased, strict about unknown keys (a typo must not pass silently)."""

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_camel, extra="forbid"
    )


# ------------------------------------------------------------------------------ workload


class WorkerTemplate(_Model):
    """The worker pods of a Deployment the operator builds and owns: a pod template.

    The fields are the Kubernetes ones (container and pod), flat, with the Kubernetes
    names and types, so a team copies them from the Deployment it runs today: the app's
    image, command and args, env, security contexts, init containers, volumes, probes,
    scheduling. Tide fills in only what scale-in depends on (see ``deployments.py``): the
    queues, concurrency and node name appended to the command line, the grace period from
    ``shutdown``, and defaults (a restricted security context, a /tmp volume) that the
    fields here override key by key.

    Without ``app``, ``command`` or ``args`` the image is Tide's and runs ``tide worker``
    (the reference app); ``app`` names the team's Celery app (``celery -A <app> worker``)
    and lets the operator give the pods a liveness probe that pings the worker through it.
    """

    image: str = Field(
        min_length=1,
        description="Container image of the workers: the team's app image, or Tide's.",
    )
    app: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$",
        description="The Celery app the workers run (`celery -A <app>`), e.g. `myproject` "
        "or `myproject.celery:app`. Without command and args the workers run `celery -A "
        "<app> worker`; the liveness probe pings each worker through it. Leave it out for "
        "Tide's image (`tide worker`, the reference app).",
    )
    command: tuple[str, ...] = Field(
        default=(),
        description="The container's command (Kubernetes `command`, replaces the image's "
        "entrypoint). Default: `celery` when app is set, else the image's entrypoint.",
    )
    args: tuple[str, ...] = Field(
        default=(),
        description="The container's arguments up to the worker sub-command, e.g. "
        "[celery, -A, myproject, worker, --loglevel, INFO]. Tide appends -Q, -c, -n "
        "worker@$(POD_NAME), --prefetch-multiplier and extraArgs. Default without "
        "command: [-A, <app>, worker] with app, else [worker] (Tide's image).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Kubernetes imagePullPolicy of the worker container."
    )
    working_dir: str | None = Field(
        default=None, description="Working directory of the worker container."
    )
    env: tuple[dict[str, Any], ...] = Field(
        default=(),
        description="Environment variables (Kubernetes EnvVar objects), e.g. "
        "CELERY_BROKER_URL from a Secret. POD_NAME and TIDE_WORKERPOOL are set by Tide.",
    )
    env_from: tuple[dict[str, Any], ...] = Field(
        default=(), description="Kubernetes EnvFromSource objects (ConfigMaps, Secrets)."
    )
    resources: dict[str, Any] | None = Field(
        default=None, description="Kubernetes ResourceRequirements of the worker container."
    )
    extra_args: tuple[str, ...] = Field(
        default=(),
        description="Extra arguments appended to the celery worker command line.",
    )
    security_context: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes SecurityContext of the worker container, merged over "
        "Tide's default (no privilege escalation, read-only root filesystem, all "
        "capabilities dropped): e.g. {readOnlyRootFilesystem: false} for an app that "
        "writes beside its code.",
    )
    pod_security_context: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes PodSecurityContext, merged over Tide's default "
        "(runAsNonRoot, RuntimeDefault seccomp). An image whose USER is a name, not a "
        "number, needs runAsUser here to pass runAsNonRoot.",
    )
    volume_mounts: tuple[dict[str, Any], ...] = Field(
        default=(),
        description="Kubernetes VolumeMounts of the worker container (Tide mounts an "
        "emptyDir at /tmp unless one of these does).",
    )
    volumes: tuple[dict[str, Any], ...] = Field(
        default=(), description="Kubernetes Volumes of the worker pods."
    )
    init_containers: tuple[dict[str, Any], ...] = Field(
        default=(),
        description="Kubernetes init containers (also native sidecars, restartPolicy: "
        "Always), e.g. a database proxy.",
    )
    liveness_probe: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes Probe replacing Tide's. Default: with app (or Tide's image), "
        "`celery -A <app> inspect ping` to the pod's own worker every 60 s, restarting after "
        "five silent minutes; with command or args but no app, none (Tide cannot name the "
        "app to ping).",
    )
    readiness_probe: dict[str, Any] | None = Field(
        default=None, description="Kubernetes Probe; workers take no traffic, so none by default."
    )
    startup_probe: dict[str, Any] | None = Field(
        default=None, description="Kubernetes Probe; none by default."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    service_account_name: str | None = Field(
        default=None, description="Service account the worker pods run as."
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the service account's token (workers rarely call the Kubernetes "
        "API, so off by default).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes nodeSelector of the worker pods."
    )
    tolerations: tuple[dict[str, Any], ...] = Field(
        default=(), description="Kubernetes tolerations of the worker pods."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Kubernetes affinity of the worker pods."
    )
    topology_spread_constraints: tuple[dict[str, Any], ...] = Field(
        default=(), description="Kubernetes topologySpreadConstraints of the worker pods."
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the worker pods."
    )
    image_pull_secrets: tuple[dict[str, Any], ...] = Field(
        default=(), description="Kubernetes imagePullSecrets ({name: ...}) of the worker pods."
    )


class ScaleTargetRef(_Model):
    """An existing Deployment in the pool's namespace to scale (never created or deleted)."""

    api_version: Literal["apps/v1"] = Field(
        default="apps/v1", description="API version of the target; only apps/v1."
    )
    kind: Literal["Deployment"] = Field(
        default="Deployment", description="Kind of the target; only Deployment."
    )
    name: str = Field(min_length=1, description="Name of the Deployment in this namespace.")


# ------------------------------------------------------------------------------- metrics


class PrometheusQueries(_Model):
    """PromQL overrides; ``$queues`` is replaced by a regex matching the pool's queues."""

    waiting: str | None = Field(
        default=None,
        description="Tasks waiting. Default: "
        'sum by (queue_name) (celery_queue_length{queue_name=~"$queues"}'
        " and on (job, instance) tide_exporter_up): Tide's exporters only, not another"
        " exporter of the same names.",
    )
    inflight: str | None = Field(
        default=None,
        description="Tasks delivered and not acknowledged. Default: "
        'sum by (queue_name) (celery_queue_inflight{queue_name=~"$queues"}'
        " and on (job, instance) tide_exporter_up): Tide's exporters only, not another"
        " exporter of the same names.",
    )
    scheduled: str | None = Field(
        default=None,
        description="ETA/countdown tasks held by workers. Default: "
        'sum by (queue_name) (celery_queue_scheduled{queue_name=~"$queues"}'
        " and on (job, instance) tide_exporter_up): Tide's exporters only, not another"
        " exporter of the same names.",
    )
    oldest_age: str | None = Field(
        default=None,
        description="Age in seconds of the oldest waiting task. Default: "
        'max by (queue_name) (celery_queue_oldest_age_seconds{queue_name=~"$queues"}'
        " and on (job, instance) tide_exporter_up): Tide's exporters only, not another"
        " exporter of the same names.",
    )


# PromQL label matchers as they go between braces: name="value", name=~"regex", ...
_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"([^"\\]|\\.)*"'
_SELECTOR_PATTERN = rf"^\s*{_MATCHER}(\s*,\s*{_MATCHER})*\s*$"


class PrometheusMetrics(_Model):
    """Read the queue series from Prometheus' HTTP API (instant queries)."""

    url: str = Field(
        pattern=_URL_PATTERN,
        description="Base URL of the Prometheus server, e.g. http://prometheus:9090.",
    )
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of one query, in seconds."
    )
    selector: str | None = Field(
        default=None,
        max_length=1024,
        pattern=_SELECTOR_PATTERN,
        description="Label matchers added to every default query, naming the Tide exporter"
        ' this pool\'s queues come from, e.g. namespace="tide" or job="tide-exporter".'
        " Needed where one Prometheus scrapes several Tide releases whose brokers have"
        " queues of the same name: without it their figures add up.",
    )
    queries: PrometheusQueries | None = Field(
        default=None, description="PromQL overrides for the four figures."
    )


class ExporterMetrics(_Model):
    """Scrape Tide's queue exporter (or celery-exporter) directly, without Prometheus."""

    url: str = Field(
        pattern=_URL_PATTERN,
        description="URL of the exporter's metrics, e.g. http://tide-exporter:9808/metrics.",
    )
    timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of one scrape, in seconds."
    )


class MetricsSpec(_Model):
    """Where the queue observations come from: exactly one of the two sources."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.prometheus) != has(self.exporter)",
                "set exactly one of prometheus or exporter",
            ),
        )
    )

    prometheus: PrometheusMetrics | None = Field(
        default=None, description="Query Prometheus for the exporter's series."
    )
    exporter: ExporterMetrics | None = Field(
        default=None, description="Scrape the queue exporter directly."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> MetricsSpec:
        if (self.prometheus is None) == (self.exporter is None):
            raise ValueError("set exactly one of prometheus or exporter")
        return self


# -------------------------------------------------------------------- shutdown and worker


class ShutdownSpec(_Model):
    """How long a worker may take to finish its tasks once told to stop."""

    grace_period_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="terminationGracePeriodSeconds of worker pods: Celery's warm shutdown "
        "finishes running tasks within it. Make it longer than the longest task.",
    )
    longest_task_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Declared duration of the longest task; a grace period shorter than it "
        "is reported on status (SafeScaleIn=False).",
    )
    consolidate: bool = Field(
        default=False,
        description="On scale-in, tell busy workers to stop consuming (Celery's "
        "cancel_consumer) instead of removing them: they finish their tasks with no deadline, "
        "take no new ones and are removed once idle, or consume again when the pool grows. "
        "Needs workers named worker@<pod> and the operator's broker access (the busy probe).",
    )


class WorkerSettings(_Model):
    """Celery worker settings that decide whether scale-in can lose or delay work."""

    prefetch_multiplier: int = Field(
        default=1,
        ge=0,
        description="Celery worker_prefetch_multiplier (0 = unlimited). Above 1 a stopping "
        "worker holds tasks it has not started; passed to owned workers' command line.",
    )
    acks_late: bool = Field(
        default=True,
        description="Whether the tasks acknowledge after running (task_acks_late). With "
        "early acks a worker killed mid-task loses the task; declared for the safety check.",
    )


# ------------------------------------------------------------------------------- the spec


class WorkerPoolSpec(_Model):
    """The desired state of one pool of Celery workers and how it scales."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.template) != has(self.scaleTargetRef)",
                "set exactly one of template or scaleTargetRef",
            ),
            (
                f"(has(self.minReplicas) ? self.minReplicas : {DEFAULT_MIN_REPLICAS}) <= "
                f"(has(self.maxReplicas) ? self.maxReplicas : {DEFAULT_MAX_REPLICAS})",
                "minReplicas must not exceed maxReplicas",
            ),
            (
                "!has(self.fallback) || self.fallback.replicas <= "
                f"(has(self.maxReplicas) ? self.maxReplicas : {DEFAULT_MAX_REPLICAS})",
                "fallback.replicas must not exceed maxReplicas",
            ),
            (
                "!has(self.staleAfterSeconds) || self.staleAfterSeconds >= "
                f"(has(self.pollingInterval) ? self.pollingInterval : {DEFAULT_POLLING_INTERVAL})",
                "staleAfterSeconds must be at least pollingInterval",
            ),
        )
    )

    queues: tuple[Annotated[str, Field(min_length=1, max_length=200)], ...] = Field(
        min_length=1,
        max_length=32,
        description="Celery queues the workers consume (celery worker -Q).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    concurrency: int = Field(
        default=1, ge=1, le=1024, description="Task slots per worker (celery worker -c)."
    )
    template: WorkerTemplate | None = Field(
        default=None,
        description="Build and own a worker Deployment from this template. "
        "Exclusive with scaleTargetRef.",
    )
    scale_target_ref: ScaleTargetRef | None = Field(
        default=None,
        description="Scale an existing Deployment instead (never created, changed or "
        "deleted apart from its replicas). Exclusive with template.",
    )
    min_replicas: int = Field(
        default=DEFAULT_MIN_REPLICAS, ge=0, description="Fewest workers; 0 allows scale to zero."
    )
    max_replicas: int = Field(
        default=DEFAULT_MAX_REPLICAS, ge=1, le=10000, description="Most workers."
    )
    target_backlog_per_worker: int | None = Field(
        default=None,
        ge=1,
        description="Waiting plus running tasks one worker should hold (default: concurrency).",
    )
    max_wait_seconds: float = Field(
        default=DEFAULT_MAX_WAIT,
        ge=0,
        description="Target for the age of the oldest waiting task, in seconds; 0 = no age "
        "target (the backlog per worker alone sizes the pool).",
    )
    activation_threshold: int = Field(
        default=0,
        ge=0,
        description="From zero, wake only when more tasks than this wait or run.",
    )
    cooldown_period: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Seconds since a task last waited or arrived before the pool may scale to zero"
            " (never while a task runs)."
        ),
    )
    polling_interval: float = Field(
        default=DEFAULT_POLLING_INTERVAL,
        gt=0,
        le=3600,
        description="Seconds between two reads of the metrics and decisions.",
    )
    stale_after_seconds: float | None = Field(
        default=None,
        gt=0,
        description="An observation older than this counts as a failed read (at least "
        "pollingInterval; default: 3 x pollingInterval, at least 30 s).",
    )
    behavior: Behavior = Field(
        default_factory=Behavior,
        description="Scale-up and scale-down stabilisation windows and step policies, "
        "as in autoscaling/v2 HPA.",
    )
    fallback: Fallback | None = Field(
        default=None,
        description="What to run once more than failureThreshold metric reads in a row "
        "failed (KEDA's fallback: behavior static, currentReplicas, currentReplicasIfHigher "
        "or currentReplicasIfLower); never below the workers that held running tasks at the "
        "last good read. Without it the pool holds its size.",
    )
    forecast: Forecast = Field(
        default_factory=Forecast,
        description="Have workers ready for the arrivals the pool's own history forecasts "
        "(trend and daily season); never wakes a pool from zero unless wakeFromZero.",
    )
    paused: bool = Field(
        default=False, description="Stop scaling: the operator keeps the current size."
    )
    metrics: MetricsSpec = Field(description="Where to read the queue observations.")
    shutdown: ShutdownSpec = Field(
        default_factory=ShutdownSpec, description="Graceful shutdown of workers."
    )
    worker: WorkerSettings = Field(
        default_factory=WorkerSettings, description="Celery settings that affect scale-in."
    )

    @field_validator("max_wait_seconds", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any) -> Any:
        # The API server replaces a null with the schema's default; so does a file read here.
        return DEFAULT_MAX_WAIT if value is None else value

    @model_validator(mode="after")
    def _consistent(self) -> WorkerPoolSpec:
        # The same rules as the CRD's CEL, in the same words.
        if (self.template is None) == (self.scale_target_ref is None):
            raise ValueError("set exactly one of template or scaleTargetRef")
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.fallback is not None and self.fallback.replicas > self.max_replicas:
            raise ValueError("fallback.replicas must not exceed maxReplicas")
        if (
            self.stale_after_seconds is not None
            and self.stale_after_seconds < self.polling_interval
        ):
            raise ValueError("staleAfterSeconds must be at least pollingInterval")
        if len(set(self.queues)) != len(self.queues) or not all(self.queues):
            raise ValueError("queues must be distinct and non-empty")
        return self

    @property
    def owned(self) -> bool:
        """Whether the operator builds and owns the Deployment (``template``)."""
        return self.template is not None

    @property
    def stale_after(self) -> float:
        """``staleAfterSeconds``, or its default, which follows ``pollingInterval``."""
        if self.stale_after_seconds is not None:
            return self.stale_after_seconds
        return max(MIN_STALE_AFTER, STALE_AFTER_POLLS * self.polling_interval)

    def to_policy_config(self) -> PolicyConfig:
        """The scaling part, for ``policy.decide``."""
        return PolicyConfig(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            concurrency=self.concurrency,
            target_backlog_per_worker=self.target_backlog_per_worker,
            max_wait_seconds=self.max_wait_seconds or None,  # 0: no age target
            activation_threshold=self.activation_threshold,
            cooldown_period=self.cooldown_period,
            polling_interval=self.polling_interval,
            behavior=self.behavior,
            fallback=self.fallback,
            forecast=self.forecast,
            paused=self.paused,
            stale_after_seconds=self.stale_after,
            grace_period_seconds=float(self.shutdown.grace_period_seconds),
            longest_task_seconds=(
                float(self.shutdown.longest_task_seconds)
                if self.shutdown.longest_task_seconds is not None
                else None
            ),
        )


# ------------------------------------------------------------------------------- status


class LastObservation(_Model):
    """The figures the last decision acted on."""

    waiting: int = Field(ge=0, description="Tasks waiting in the pool's queues.")
    inflight: int = Field(ge=0, description="Tasks delivered to workers and not acknowledged.")
    scheduled: int = Field(ge=0, description="ETA/countdown tasks held by workers.")
    oldest_age_seconds: float | None = Field(
        default=None, description="Age of the oldest waiting task, in seconds."
    )
    at: str = Field(description="When the observation was taken (RFC 3339).")


class WorkersSeen(_Model):
    """What the pool's workers run, as they answered ``inspect conf`` and ``stats``."""

    answered: int = Field(ge=0, description="Workers that answered.")
    acks_late: bool = Field(description="Whether every one acknowledges after running.")
    prefetch_multiplier: int = Field(ge=0, description="The highest prefetch multiplier.")
    concurrency: int | None = Field(default=None, description="The fewest slots per worker.")
    integration: bool = Field(
        description="Whether every one runs Tide's integration (running tasks counted)."
    )


class Condition(_Model):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Ready, Active, Fallback, Paused or SafeScaleIn.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )


class ForecastStatus(_Model):
    """The arrivals forecast's seasonal profile, kept here so an operator restart (an
    upgrade, a rescheduled pod) does not forget a day of history."""

    season_seconds: int = Field(
        ge=3600, description="Length of the season (spec.forecast.seasonSeconds) it covers."
    )
    arrivals_per_second: tuple[float, ...] = Field(
        max_length=288,
        description="Mean arrival rate per bucket of the season (288 buckets); -1 where no "
        "arrivals were measured yet.",
    )


class WorkerPoolStatus(_Model):
    """What the operator last saw and did."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec last acted on."
    )
    replicas: int | None = Field(
        default=None, description="Current replicas of the target, not counting terminating pods."
    )
    ready_replicas: int | None = Field(default=None, description="Ready worker pods.")
    desired_replicas: int | None = Field(
        default=None, description="Replicas the policy asked for at the last decision."
    )
    selector: str | None = Field(default=None, description="Label selector of the worker pods.")
    last_observation: LastObservation | None = Field(
        default=None, description="Queue figures the last decision acted on."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the operator last changed the replicas (RFC 3339)."
    )
    last_decision: str | None = Field(
        default=None, description="The policy's reason for the last decision."
    )
    workers: WorkersSeen | None = Field(
        default=None,
        description="What the workers really run (acks, prefetch, slots, integration), "
        "which SafeScaleIn is decided from.",
    )
    forecast: ForecastStatus | None = Field(
        default=None,
        description="The arrivals forecast's seasonal profile, restored when the operator "
        "restarts.",
    )
    acting_replica: str | None = Field(
        default=None,
        description="The operator replica that acts on this pool: the holder of the Lease "
        "tide-operator in the operator's namespace (its pod name).",
    )
    conditions: tuple[Condition, ...] = Field(
        default=(),
        description="Ready, Active, Fallback, Paused and SafeScaleIn.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


# ------------------------------------------------------------------------ a whole object


@dataclass(frozen=True, slots=True)
class WorkerPool:
    """A parsed WorkerPool: identity from metadata, plus the validated spec."""

    name: str
    namespace: str
    uid: str
    spec: WorkerPoolSpec
    generation: int | None = None

    @classmethod
    def from_body(cls, body: Any) -> WorkerPool:
        """Parse an object as the API returns it (raises ``pydantic.ValidationError``)."""
        meta = body["metadata"]
        spec = WorkerPoolSpec.model_validate(dict(body.get("spec") or {}))
        if spec.owned and len(meta["name"]) > MAX_OWNED_NAME:
            raise ValidationError.from_exception_data(
                "WorkerPool",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("name_too_long", NAME_MESSAGE),
                        loc=("metadata", "name"),
                        input=meta["name"],
                    )
                ],
            )
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            spec=spec,
        )
