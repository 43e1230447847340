"""Request and response shapes of the jobs API (they are the OpenAPI schema too)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

from tide.jobs.models import Job, JobKind, JobProgress, JobTrigger
from tide.jobs.services import MAX_CALLBACKS, MAX_DEPTH, Options, RetryPolicy, Step, Workflow


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _strict_type_error(field: serializers.Field, value: Any) -> str | None:
    """Why ``value`` (as JSON gave it) does not fit ``field`` without conversion, or None.

    DRF converts on input: ``"1"`` becomes 1, ``0`` becomes False, ``5`` becomes "5". A
    client that sends the wrong type has a bug, and a conversion hides it: refuse instead.
    """
    if value is None:
        return None  # allow_null decides
    if isinstance(field, serializers.BooleanField):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(field, serializers.IntegerField):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(field, serializers.FloatField):
        ok, wanted = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(
        field, serializers.CharField | serializers.ChoiceField | serializers.DateTimeField
    ):
        ok, wanted = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"Must be {wanted}, not {_json_name(value)}; nothing is converted."


class StrictSerializer(serializers.Serializer):
    # An input shape taken exactly: unknown (or read-only) fields are refused by name, and
    # booleans, numbers and strings must arrive as such (no coercion). A comment, not a
    # docstring: the schema would give it as the description of every request body.

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            writable = sorted(name for name, field in self.fields.items() if not field.read_only)
            errors: dict[str, list[str]] = {}
            for name, value in data.items():
                field = self.fields.get(name)
                if field is None or field.read_only:
                    errors[name] = [
                        f"Unknown field {name!r}; this takes: {', '.join(writable)}."
                        if field is None
                        else f"{name!r} is read-only; leave it out."
                    ]
                elif (wrong := _strict_type_error(field, value)) is not None:
                    errors[name] = [wrong]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


# The furthest ahead a job may be scheduled (countdown or eta): 30 days.
MAX_DELAY_SECONDS = 30 * 24 * 3600


def known_queues() -> list[str]:
    """Queues this deployment knows: configured, routed or declared (as the exporter sees)."""
    from tide.celery import app
    from tide.exporter.config import app_queues

    return app_queues(app)


class QueueField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        known = known_queues()
        if value not in known:
            # No worker consumes an unknown queue: the job would wait forever.
            raise serializers.ValidationError(
                f"Unknown queue {value!r}; known queues: {', '.join(known)}."
            )
        return value


def _within(value: float, setting: str, what: str) -> float:
    # The bounds are the platform operator's (settings), read per request so a deployment
    # changes them without a new schema; the schema's text names the settings.
    bound = getattr(settings, setting)
    if value > bound:
        raise serializers.ValidationError(
            f"{what} {value:g} is above this platform's bound of {bound:g} ({setting})."
        )
    return value


class RetrySerializer(StrictSerializer):
    """A job's own retry policy for the errors its task retries."""

    max_retries = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="Retries after the first attempt (at most TIDE_JOB_MAX_RETRIES, default 10).",
    )
    backoff = serializers.FloatField(
        required=False,
        min_value=0,
        help_text="Seconds before the first retry, doubled for each next one "
        "(at most TIDE_JOB_MAX_RETRY_DELAY_SECONDS, default 3600).",
    )
    backoff_max = serializers.FloatField(
        required=False,
        min_value=0,
        help_text="The longest wait between attempts (same bound as backoff).",
    )
    jitter = serializers.BooleanField(
        required=False, default=True, help_text="Wait a random part of each delay."
    )

    def validate_max_retries(self, value: int) -> int:
        return int(_within(value, "TIDE_JOB_MAX_RETRIES", "max_retries"))

    def validate_backoff(self, value: float) -> float:
        return _within(value, "TIDE_JOB_MAX_RETRY_DELAY_SECONDS", "backoff")

    def validate_backoff_max(self, value: float) -> float:
        return _within(value, "TIDE_JOB_MAX_RETRY_DELAY_SECONDS", "backoff_max")


class DeliveryFields(StrictSerializer):
    queue = QueueField(required=False, max_length=200)
    priority = serializers.IntegerField(
        required=False, min_value=0, max_value=9, help_text="0 (lowest) to 9 (most urgent)."
    )
    countdown = serializers.FloatField(
        required=False, min_value=0, max_value=MAX_DELAY_SECONDS, help_text="Seconds to wait."
    )
    eta = serializers.DateTimeField(
        required=False,
        help_text="Run no earlier than this: at most 30 days ahead, like countdown "
        "(a time in the past runs now).",
    )
    expires = serializers.DateTimeField(required=False, help_text="Discard if not run by then.")
    expires_in = serializers.FloatField(
        required=False,
        min_value=1,
        max_value=365 * 24 * 3600,
        help_text="Discard if not run within this many seconds.",
    )
    time_limit = serializers.FloatField(
        required=False,
        min_value=0.001,
        help_text="Hard time limit in seconds: the worker kills the task past it "
        "(at most TIDE_JOB_MAX_TIME_LIMIT_SECONDS, default 3600).",
    )
    soft_time_limit = serializers.FloatField(
        required=False,
        min_value=0.001,
        help_text="Soft time limit in seconds: SoftTimeLimitExceeded is raised in the task "
        "(at most time_limit).",
    )
    retry = RetrySerializer(required=False, help_text="This job's retry policy.")

    def validate_eta(self, value: datetime) -> datetime:
        # A job due in year 9999 would hold a worker (Celery keeps ETA messages in the
        # worker's memory) for ever: the same bound as countdown.
        latest = timezone.now() + timedelta(seconds=MAX_DELAY_SECONDS)
        if value > latest:
            raise serializers.ValidationError(
                f"eta is more than 30 days ({MAX_DELAY_SECONDS} s) ahead; the latest "
                f"accepted now is {latest.isoformat()}."
            )
        return value

    def validate_time_limit(self, value: float) -> float:
        return _within(value, "TIDE_JOB_MAX_TIME_LIMIT_SECONDS", "time_limit")

    def validate_soft_time_limit(self, value: float) -> float:
        return _within(value, "TIDE_JOB_MAX_TIME_LIMIT_SECONDS", "soft_time_limit")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "eta" in attrs and "countdown" in attrs:
            raise serializers.ValidationError("Give eta or countdown, not both.")
        if "expires" in attrs and "expires_in" in attrs:
            raise serializers.ValidationError("Give expires or expires_in, not both.")
        if attrs.get("soft_time_limit", 0) > attrs.get("time_limit", float("inf")):
            raise serializers.ValidationError(
                {"soft_time_limit": "The soft time limit must not pass the hard one."}
            )
        return attrs

    def options(self) -> Options:
        return self.options_from(self.validated_data)

    @staticmethod
    def options_from(data: dict[str, Any]) -> Options:
        expires = data.get("expires")
        if "expires_in" in data:
            expires = timezone.now() + timedelta(seconds=data["expires_in"])
        return Options(
            queue=data.get("queue"),
            priority=data.get("priority"),
            countdown=data.get("countdown"),
            eta=data.get("eta"),
            expires=expires,
            time_limit=data.get("time_limit"),
            soft_time_limit=data.get("soft_time_limit"),
            retry=RetryPolicy(**data["retry"]) if "retry" in data else None,
        )


class CallbackSerializer(StrictSerializer):
    """A callback: a registered task run by Celery's link (when its task succeeds, with
    the result as first argument) or link_error (when it fails, with the failed task's id)."""

    task = serializers.CharField(max_length=200, help_text="A registered task name.")
    args = serializers.ListField(
        child=serializers.JSONField(allow_null=True), required=False, default=list
    )
    kwargs = serializers.DictField(
        child=serializers.JSONField(allow_null=True), required=False, default=dict
    )
    queue = QueueField(required=False, max_length=200)
    immutable = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Called without the previous result (a step) or the task's result or id "
        "(a callback).",
    )

    @staticmethod
    def to_step(data: dict[str, Any]) -> Step:
        return Step(
            task=data["task"],
            args=tuple(data.get("args", ())),
            kwargs=dict(data.get("kwargs", {})),
            queue=data.get("queue"),
            immutable=data.get("immutable", False),
            link=tuple(CallbackSerializer.to_step(c) for c in data.get("link", ())),
            link_error=tuple(CallbackSerializer.to_step(c) for c in data.get("link_error", ())),
        )


def _callbacks(help_text: str) -> serializers.ListField:
    # A ListField, not many=True: the schema then says maxItems too.
    return serializers.ListField(
        child=CallbackSerializer(), required=False, max_length=MAX_CALLBACKS, help_text=help_text
    )


LINK_HELP = f"Tasks run when this one succeeds, its result first (at most {MAX_CALLBACKS})."
LINK_ERROR_HELP = (
    f"Tasks run when this one fails for good, the failed task's id first (at most {MAX_CALLBACKS})."
)
WORKFLOW_KEYS = ("type", "steps", "callback")
NOT_ON_WORKFLOW = (
    "link and link_error are taken by a task submission (POST /api/jobs/ and bulk), not by "
    "a workflow or its steps: in a workflow, run what follows a step as the next step of a "
    "chain, or as a chord's callback."
)


class StepSerializer(CallbackSerializer):
    """A task step of a workflow."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and ("link" in data or "link_error" in data):
            # Callbacks on steps would multiply a workflow's size in the schema (and in
            # what fuzzing sends) for what a chain or a chord already says.
            raise serializers.ValidationError({"link": NOT_ON_WORKFLOW})
        if isinstance(data, dict) and any(k in data for k in WORKFLOW_KEYS):
            raise serializers.ValidationError(
                {
                    "type": f"Workflows nest at most {MAX_DEPTH} levels deep; this step would "
                    "make a deeper one: flatten it or submit it as a workflow of its own."
                }
            )
        return super().to_internal_value(data)


def _nested_step(name: str, inner: type[serializers.Serializer], level: int) -> type[Any]:
    """A workflow's step: a task (``task``, ...) or a workflow of level ``level`` (``type``,
    ``steps``, ``callback``) whose own steps are ``inner``. Spelt out per level, so the
    schema is bounded, not recursive: ``anyOf`` the task form (``Step``) and this level's
    workflow form (``NestedWorkflowLevelN``), each with its required fields."""

    class WorkflowForm(serializers.Serializer):
        __doc__ = f"A workflow nested at level {level} of {MAX_DEPTH}."
        type = serializers.ChoiceField(choices=[JobKind.CHAIN, JobKind.GROUP, JobKind.CHORD])
        steps = inner(many=True, allow_empty=False, max_length=1000)
        callback = StepSerializer(required=False, help_text="A chord's body.")

    WorkflowForm.__name__ = WorkflowForm.__qualname__ = f"NestedWorkflowLevel{level}Serializer"

    class NestedStep(StepSerializer):
        workflow_form = WorkflowForm
        __doc__ = (
            f"A step: a task (task, args, kwargs, queue, immutable) or a "
            f"nested workflow at level {level} of {MAX_DEPTH} (type, steps, callback)."
        )
        task = serializers.CharField(
            required=False, max_length=200, help_text="A task step: a registered task name."
        )
        type = serializers.ChoiceField(
            required=False,
            choices=[JobKind.CHAIN, JobKind.GROUP, JobKind.CHORD],
            help_text="A nested workflow: its shape.",
        )
        steps = inner(
            many=True,
            required=False,
            allow_empty=False,
            max_length=1000,
            help_text="A nested workflow: its steps.",
        )
        callback = StepSerializer(required=False, help_text="A nested chord's body.")

        def to_internal_value(self, data: Any) -> Any:
            if isinstance(data, dict) and ("link" in data or "link_error" in data):
                raise serializers.ValidationError({"link": NOT_ON_WORKFLOW})
            if not isinstance(data, dict) or not any(k in data for k in WORKFLOW_KEYS):
                if isinstance(data, dict) and "task" not in data:
                    raise serializers.ValidationError(
                        {"task": "Give a task, or type and steps for a nested workflow."}
                    )
                return super(StepSerializer, self).to_internal_value(data)
            mixed = sorted(k for k in data if k not in WORKFLOW_KEYS)
            if mixed:
                raise serializers.ValidationError(
                    dict.fromkeys(mixed, "A nested workflow takes type, steps and callback only.")
                )
            for key in ("type", "steps"):
                if key not in data:
                    raise serializers.ValidationError({key: "A nested workflow needs it."})
            attrs = super(StepSerializer, self).to_internal_value(data)
            for key in ("args", "kwargs", "immutable"):
                attrs.pop(key, None)
            if (attrs["type"] == JobKind.CHORD) != ("callback" in attrs):
                raise serializers.ValidationError(
                    {"callback": "A chord needs a callback; chains and groups take none."}
                )
            return attrs

    NestedStep.__name__ = NestedStep.__qualname__ = name
    return NestedStep


class NestedStepSchema(OpenApiSerializerExtension):
    """The schema of a nested level's step: ``anyOf`` its two forms (see ``_nested_step``).
    A schema of every optional field of both made fuzzing (schemathesis) ten times slower."""

    target_class = "tide.jobs.api.serializers.StepSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> Any:
        form = getattr(self.target, "workflow_form", None)
        if form is None:  # the task step itself
            return auto_schema._map_basic_serializer(self.target, direction)
        return {
            "description": self.target.__doc__,
            "anyOf": [
                auto_schema.resolve_serializer(StepSerializer, direction).ref,
                auto_schema.resolve_serializer(form, direction).ref,
            ],
        }


StepLevel3Serializer = _nested_step("StepLevel3Serializer", StepSerializer, 3)
StepLevel2Serializer = _nested_step("StepLevel2Serializer", StepLevel3Serializer, 2)


def to_workflow_step(data: dict[str, Any]) -> Step | Workflow:
    if "type" not in data:
        return CallbackSerializer.to_step(data)
    callback = data.get("callback")
    return Workflow(
        kind=JobKind(data["type"]),
        steps=tuple(to_workflow_step(s) for s in data["steps"]),
        callback=CallbackSerializer.to_step(callback) if callback else None,
    )


class SubmitTaskSerializer(DeliveryFields):
    task = serializers.CharField(max_length=200, help_text="A registered task name.")
    args = serializers.ListField(
        child=serializers.JSONField(allow_null=True), required=False, default=list
    )
    kwargs = serializers.DictField(
        child=serializers.JSONField(allow_null=True), required=False, default=dict
    )
    link = _callbacks(LINK_HELP)
    link_error = _callbacks(LINK_ERROR_HELP)

    def step(self) -> Step:
        return self.step_from(self.validated_data)

    @staticmethod
    def step_from(data: dict[str, Any]) -> Step:
        return CallbackSerializer.to_step(
            {k: data[k] for k in ("task", "args", "kwargs", "link", "link_error") if k in data}
        )


class BulkSubmitSerializer(StrictSerializer):
    jobs = SubmitTaskSerializer(
        many=True,
        allow_empty=False,
        help_text="The jobs, each as POST /api/jobs/ takes one (at most TIDE_BULK_MAX_JOBS, "
        "default 1000).",
    )

    def to_internal_value(self, data: Any) -> Any:
        # The bound is checked before any item is: a request far above it costs nothing.
        jobs = data.get("jobs") if isinstance(data, dict) else None
        bound = settings.TIDE_BULK_MAX_JOBS
        if isinstance(jobs, list) and len(jobs) > bound:
            raise serializers.ValidationError(
                {
                    "jobs": f"{len(jobs)} jobs is above this platform's bound of {bound} per "
                    "request (TIDE_BULK_MAX_JOBS); split the submission."
                }
            )
        return super().to_internal_value(data)

    def items(self) -> list[tuple[Step, Options]]:
        return [
            (SubmitTaskSerializer.step_from(data), SubmitTaskSerializer.options_from(data))
            for data in self.validated_data["jobs"]
        ]


class SubmitWorkflowSerializer(DeliveryFields):
    type = serializers.ChoiceField(choices=[JobKind.CHAIN, JobKind.GROUP, JobKind.CHORD])
    steps = StepLevel2Serializer(
        many=True,
        allow_empty=False,
        max_length=1000,
        help_text=f"Tasks, or workflows nested in this one ({MAX_DEPTH} levels at most in all; "
        "TIDE_WORKFLOW_MAX_TASKS tasks, default 1000).",
    )
    callback = StepSerializer(required=False, help_text="A chord's body: gets all results.")

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and ("link" in data or "link_error" in data):
            raise serializers.ValidationError({"link": NOT_ON_WORKFLOW})
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if (attrs["type"] == JobKind.CHORD) != ("callback" in attrs):
            raise serializers.ValidationError(
                {"callback": "A chord needs a callback; chains and groups take none."}
            )
        return attrs

    def steps_and_callback(self) -> tuple[list[Step | Workflow], Step | None]:
        data = self.validated_data
        callback = data.get("callback")
        return (
            [to_workflow_step(s) for s in data["steps"]],
            CallbackSerializer.to_step(callback) if callback else None,
        )


class ProgressSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobProgress
        fields = ["percent", "message", "at"]


# What a job shows; a workflow's step shows the run-time part of it and its position.
JOB_FIELDS = [
    "id", "url", "kind", "task_name", "args", "kwargs", "queue", "priority", "eta",
    "expires", "time_limit", "soft_time_limit", "retry_policy", "state", "progress",
    "progress_message", "result", "error", "worker", "attempts", "retries", "rerun_of",
    "created_at", "started_at", "finished_at", "cancel_requested_at",
]  # fmt: skip
STEP_FIELDS = ["id", "position", "task_name", "queue", "state", "progress",
               "progress_message", "result", "error", "worker", "attempts", "retries",
               "started_at", "finished_at", "cancel_requested_at"]  # fmt: skip


class CallbackJobSerializer(serializers.ModelSerializer):
    """A callback's job: ``trigger`` says link (ran on success) or link_error (on failure);
    one that will never run (its task ended the other way) ends revoked."""

    trigger = serializers.ChoiceField(
        choices=[JobTrigger.LINK, JobTrigger.LINK_ERROR], read_only=True
    )

    class Meta:
        model = Job
        fields = [*STEP_FIELDS, "trigger"]


class StepJobTaskSerializer(serializers.ModelSerializer):
    """A task step of the innermost nested workflow."""

    callbacks = CallbackJobSerializer(many=True, read_only=True)

    class Meta:
        model = Job
        fields = [*STEP_FIELDS, "kind", "callbacks"]


class StepJobLevel3Serializer(serializers.ModelSerializer):
    """A step of a nested workflow: a task, or a workflow at level 3 with its steps."""

    callbacks = CallbackJobSerializer(many=True, read_only=True)
    steps = StepJobTaskSerializer(many=True, read_only=True, source="workflow_steps")

    class Meta:
        model = Job
        fields = [*STEP_FIELDS, "kind", "steps", "callbacks"]


class StepJobSerializer(serializers.ModelSerializer):
    """A workflow's step: a task, or a nested workflow (level 2) with its steps."""

    callbacks = CallbackJobSerializer(many=True, read_only=True)
    steps = StepJobLevel3Serializer(many=True, read_only=True, source="workflow_steps")

    class Meta:
        model = Job
        fields = [*STEP_FIELDS, "kind", "steps", "callbacks"]


def _datetime(value: Any) -> str | None:
    # DRF's DateTimeField output: ISO 8601, UTC written as Z.
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class JobSerializer(serializers.ModelSerializer):
    """A job as the API shows it.

    ``to_representation`` is written out by hand: building a ModelSerializer's fields costs
    more CPU than the rest of a submission together, and this is on the submit path. A test
    keeps it equal to what DRF's field-by-field rendering gives.
    """

    url = serializers.HyperlinkedIdentityField(view_name="job-detail")

    class Meta:
        model = Job
        fields = JOB_FIELDS
        read_only_fields = fields

    def to_representation(self, instance: Job) -> dict[str, Any]:
        request = self.context.get("request")
        url = reverse("job-detail", args=[instance.pk])
        return {
            "id": str(instance.id),
            "url": request.build_absolute_uri(url) if request else url,
            "kind": instance.kind,
            "task_name": instance.task_name,
            "args": instance.args,
            "kwargs": instance.kwargs,
            "queue": instance.queue,
            "priority": instance.priority,
            "eta": _datetime(instance.eta),
            "expires": _datetime(instance.expires),
            "time_limit": instance.time_limit,
            "soft_time_limit": instance.soft_time_limit,
            "retry_policy": instance.retry_policy,
            "state": instance.state,
            "progress": instance.progress,
            "progress_message": instance.progress_message,
            "result": instance.result,
            "error": instance.error,
            "worker": instance.worker,
            "attempts": instance.attempts,
            "retries": instance.retries,
            "rerun_of": str(instance.rerun_of_id) if instance.rerun_of_id else None,
            "created_at": _datetime(instance.created_at),
            "started_at": _datetime(instance.started_at),
            "finished_at": _datetime(instance.finished_at),
            "cancel_requested_at": _datetime(instance.cancel_requested_at),
        }


class BulkResultSerializer(serializers.Serializer):
    jobs = JobSerializer(many=True, help_text="The jobs, in the order submitted.")


class JobDetailSerializer(JobSerializer):
    steps = StepJobSerializer(
        many=True,
        read_only=True,
        source="workflow_steps",
        help_text="A workflow's steps in submission order, nested workflows with theirs.",
    )
    callbacks = CallbackJobSerializer(
        many=True, read_only=True, help_text="A task's link and link_error callbacks."
    )
    progress_history = ProgressSerializer(many=True, read_only=True, source="progress_events")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "steps", "callbacks", "progress_history"]
        read_only_fields = fields

    def to_representation(self, instance: Job) -> dict[str, Any]:
        # The detail view is read far less often than jobs are submitted: DRF renders it.
        return serializers.ModelSerializer.to_representation(self, instance)


class CancelSerializer(StrictSerializer):
    terminate = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also stop the task if it is running (SIGTERM); it then ends revoked once "
        "it has stopped. Without it a running task runs to its end. Waiting jobs end "
        "revoked either way.",
    )


class TaskInfoSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    queue = serializers.CharField()
    parameters = serializers.ListField(child=serializers.DictField())


class QueueInfoSerializer(serializers.Serializer):
    name = serializers.CharField()
    tasks = serializers.ListField(child=serializers.CharField())
    waiting = serializers.IntegerField(allow_null=True, help_text="Messages ready to run.")
    inflight = serializers.IntegerField(
        allow_null=True, help_text="Delivered, not yet acknowledged (running or prefetched)."
    )
    scheduled = serializers.IntegerField(
        allow_null=True, help_text="Held by workers until their ETA/countdown."
    )
    oldest_age_seconds = serializers.FloatField(
        allow_null=True, help_text="Age of the oldest waiting message."
    )
    source = serializers.CharField(allow_null=True, help_text="Where the figures came from.")
    metrics_error = serializers.CharField(allow_null=True)


PERIODS = ["days", "hours", "minutes", "seconds"]


class ScheduleSerializer(StrictSerializer):
    """When a periodic task runs: exactly one of ``every`` (+ ``period``), ``crontab``
    (+ ``timezone``) or ``at``."""

    every = serializers.IntegerField(
        required=False,
        min_value=1,
        # django-celery-beat stores it in a 32-bit column (a 500 above it before).
        max_value=2**31 - 1,
        help_text="Run every N periods (with period).",
    )
    period = serializers.ChoiceField(choices=PERIODS, required=False, default="seconds")
    crontab = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Five cron fields: minute hour day-of-month month day-of-week.",
    )
    timezone = serializers.CharField(
        required=False, default="UTC", max_length=63, help_text="The crontab's time zone."
    )
    at = serializers.DateTimeField(required=False, help_text="Run once, at this time.")

    def validate_crontab(self, value: str) -> str:
        from django.core.exceptions import ValidationError as DjangoValidationError
        from django_celery_beat import validators

        fields = value.split()
        if len(fields) != 5:
            raise serializers.ValidationError(
                "Give five fields: minute hour day-of-month month day-of-week, e.g. '*/15 * * * *'."
            )
        checks = (
            ("minute", validators.minute_validator),
            ("hour", validators.hour_validator),
            ("day of month", validators.day_of_month_validator),
            ("month", validators.month_of_year_validator),
            ("day of week", validators.day_of_week_validator),
        )
        for field, (what, check) in zip(fields, checks, strict=True):
            try:
                check(field)
            except (DjangoValidationError, ValueError, IndexError) as exc:
                raise serializers.ValidationError(f"Bad {what} field {field!r}: {exc}") from None
        return " ".join(fields)

    def validate_timezone(self, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise serializers.ValidationError(
                f"Unknown time zone {value!r}; use an IANA name such as 'Europe/Paris'."
            ) from None
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kinds = [k for k in ("every", "crontab", "at") if k in attrs]
        if len(kinds) != 1:
            raise serializers.ValidationError(
                "Give exactly one of every (with period), crontab (with timezone) or at."
            )
        if "every" in attrs:
            period = attrs.get("period", "seconds")
            try:
                # Beat builds this timedelta on every tick: one it cannot build stops beat.
                timedelta(**{period: attrs["every"]})
            except OverflowError:
                raise serializers.ValidationError(
                    {"every": f"{attrs['every']} {period} is longer than an interval can be."}
                ) from None
        return attrs

    def to_schedule(self, data: dict[str, Any]) -> Any:
        from tide.jobs.periodic import Schedule

        if "every" in data:
            return Schedule(every=data["every"], period=data.get("period", "seconds"))
        if "crontab" in data:
            return Schedule(crontab=data["crontab"], timezone=data.get("timezone", "UTC"))
        return Schedule(at=data["at"])


class PeriodicTaskSerializer(StrictSerializer):
    """A periodic task as the API shows and takes it (stored by django-celery-beat)."""

    id = serializers.IntegerField(read_only=True)
    url = serializers.HyperlinkedIdentityField(view_name="periodic-task-detail")
    name = serializers.CharField(max_length=200, help_text="Unique name.")
    task = serializers.CharField(max_length=200, help_text="A registered task name.")
    args = serializers.ListField(
        child=serializers.JSONField(allow_null=True), required=False, default=list
    )
    kwargs = serializers.DictField(
        child=serializers.JSONField(allow_null=True), required=False, default=dict
    )
    schedule = ScheduleSerializer()
    queue = QueueField(required=False, allow_null=True, max_length=200)
    priority = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=9, help_text="0 to 9."
    )
    enabled = serializers.BooleanField(
        required=False, default=True, help_text="False pauses it (beat skips it)."
    )
    one_off = serializers.BooleanField(read_only=True, help_text="Runs once (an `at` schedule).")
    expires = serializers.DateTimeField(
        required=False, allow_null=True, help_text="No runs after this time."
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    last_run_at = serializers.DateTimeField(read_only=True, allow_null=True)
    total_run_count = serializers.IntegerField(read_only=True)
    changed_at = serializers.DateTimeField(read_only=True, source="date_changed")

    def validate_name(self, value: str) -> str:
        from django_celery_beat.models import PeriodicTask

        if "\x00" in value or not value.strip():
            raise serializers.ValidationError("Give a name of printable characters.")
        taken = PeriodicTask.objects.filter(name=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError(f"A periodic task is already named {value!r}.")
        return value

    def spec(self) -> Any:
        import json

        from tide.jobs.periodic import PeriodicSpec

        data = self.validated_data
        step = None
        if {"task", "args", "kwargs"} & set(data):
            # A change of the arguments alone is checked against the stored task, and a
            # new task against the stored arguments: what beat will send must fit.
            stored: dict[str, Any] = {"task": "", "args": "[]", "kwargs": "{}"}
            if self.instance is not None:
                stored = {
                    "task": self.instance.task,
                    "args": self.instance.args,
                    "kwargs": self.instance.kwargs,
                }
            step = Step(
                task=data.get("task") or stored["task"],
                args=tuple(data["args"] if "args" in data else json.loads(stored["args"] or "[]")),
                kwargs=dict(
                    data["kwargs"] if "kwargs" in data else json.loads(stored["kwargs"] or "{}")
                ),
            )
        schedule = data.get("schedule")
        return PeriodicSpec(
            name=data.get("name"),
            step=step,
            schedule=ScheduleSerializer().to_schedule(schedule) if schedule else None,
            queue=data.get("queue"),
            priority=data.get("priority"),
            enabled=data.get("enabled") if (not self.partial or "enabled" in data) else None,
            expires=data.get("expires"),
            description=data.get("description"),
        )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        import json

        from tide.jobs.periodic import api_priority, describe_schedule

        request = self.context.get("request")
        url = reverse("periodic-task-detail", args=[instance.pk])
        schedule = describe_schedule(instance)
        if "at" in schedule:
            schedule["at"] = _datetime(schedule["at"])
        return {
            "id": instance.pk,
            "url": request.build_absolute_uri(url) if request else url,
            "name": instance.name,
            "task": instance.task,
            "args": json.loads(instance.args or "[]"),
            "kwargs": json.loads(instance.kwargs or "{}"),
            "schedule": schedule,
            "queue": instance.queue or None,
            "priority": api_priority(instance),
            "enabled": instance.enabled,
            "one_off": instance.one_off,
            "expires": _datetime(instance.expires),
            "description": instance.description,
            "last_run_at": _datetime(instance.last_run_at),
            "total_run_count": instance.total_run_count,
            "changed_at": _datetime(instance.date_changed),
        }
