"""Request and response shapes of the jobs API (they are the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from tide.jobs.models import Job, JobKind, JobProgress
from tide.jobs.services import Options, RetryPolicy, Step


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


class RetrySerializer(serializers.Serializer):
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


class DeliveryFields(serializers.Serializer):
    queue = QueueField(required=False, max_length=200)
    priority = serializers.IntegerField(
        required=False, min_value=0, max_value=9, help_text="0 (lowest) to 9 (most urgent)."
    )
    countdown = serializers.FloatField(
        required=False, min_value=0, max_value=30 * 24 * 3600, help_text="Seconds to wait."
    )
    eta = serializers.DateTimeField(required=False, help_text="Run no earlier than this.")
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
        from datetime import timedelta

        from django.utils import timezone

        data = self.validated_data
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


class StepSerializer(serializers.Serializer):
    task = serializers.CharField(max_length=200)
    args = serializers.ListField(child=serializers.JSONField(), required=False, default=list)
    kwargs = serializers.DictField(child=serializers.JSONField(), required=False, default=dict)
    queue = QueueField(required=False, max_length=200)
    immutable = serializers.BooleanField(
        required=False, default=False, help_text="Ignore the previous step's result."
    )

    def to_step(self, data: dict[str, Any]) -> Step:
        return Step(
            task=data["task"],
            args=tuple(data["args"]),
            kwargs=dict(data["kwargs"]),
            queue=data.get("queue"),
            immutable=data["immutable"],
        )


class SubmitTaskSerializer(DeliveryFields):
    task = serializers.CharField(max_length=200, help_text="A registered task name.")
    args = serializers.ListField(child=serializers.JSONField(), required=False, default=list)
    kwargs = serializers.DictField(child=serializers.JSONField(), required=False, default=dict)

    def step(self) -> Step:
        data = self.validated_data
        return Step(task=data["task"], args=tuple(data["args"]), kwargs=dict(data["kwargs"]))


class SubmitWorkflowSerializer(DeliveryFields):
    type = serializers.ChoiceField(choices=[JobKind.CHAIN, JobKind.GROUP, JobKind.CHORD])
    steps = StepSerializer(many=True, allow_empty=False, max_length=1000)
    callback = StepSerializer(required=False, help_text="A chord's body: gets all results.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if (attrs["type"] == JobKind.CHORD) != ("callback" in attrs):
            raise serializers.ValidationError(
                {"callback": "A chord needs a callback; chains and groups take none."}
            )
        return attrs

    def steps_and_callback(self) -> tuple[list[Step], Step | None]:
        data = self.validated_data
        step = StepSerializer()
        callback = data.get("callback")
        return (
            [step.to_step(s) for s in data["steps"]],
            step.to_step(callback) if callback else None,
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
    "created_at", "started_at", "finished_at",
]  # fmt: skip
STEP_FIELDS = ["id", "position", "task_name", "queue", "state", "progress",
               "progress_message", "result", "error", "worker", "attempts", "retries",
               "started_at", "finished_at"]  # fmt: skip


class StepJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = STEP_FIELDS


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
        }


class JobDetailSerializer(JobSerializer):
    steps = StepJobSerializer(many=True, read_only=True)
    progress_history = ProgressSerializer(many=True, read_only=True, source="progress_events")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "steps", "progress_history"]
        read_only_fields = fields

    def to_representation(self, instance: Job) -> dict[str, Any]:
        # The detail view is read far less often than jobs are submitted: DRF renders it.
        return serializers.ModelSerializer.to_representation(self, instance)


class CancelSerializer(serializers.Serializer):
    terminate = serializers.BooleanField(
        required=False, default=False, help_text="Also stop the task if it is running."
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
