"""The job record: one row per submitted task or workflow, and one per workflow step.

A workflow (chain, group, chord) is a parent row whose ``kind`` names the shape, with a
child row per task; the parent's state and result are derived from its children by
``services.refresh_workflow`` each time a child moves. Each task row's primary key *is*
its Celery task id, so a worker's signal finds its row with one indexed lookup.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class JobState(models.TextChoices):
    PENDING = "pending"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVOKED = "revoked"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.REVOKED})


class JobKind(models.TextChoices):
    TASK = "task"
    CHAIN = "chain"
    GROUP = "group"
    CHORD = "chord"


class JobTrigger(models.TextChoices):
    """What starts a callback: Celery's ``link`` (the task succeeded) or ``link_error``
    (it failed). A workflow's steps have none."""

    NONE = "", "step"
    LINK = "link"
    LINK_ERROR = "link_error"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=8, choices=JobKind.choices, default=JobKind.TASK)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="steps"
    )
    # Position of a step in its workflow (chain order; a chord's body comes last), or of a
    # callback among its task's.
    position = models.PositiveIntegerField(default=0)
    # Set on a callback: its ``parent`` is the task whose ``link``/``link_error`` it is,
    # not a workflow, and it takes no part in the parent's state.
    trigger = models.CharField(
        max_length=10, choices=JobTrigger.choices, blank=True, default=JobTrigger.NONE
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    task_name = models.CharField(max_length=200, blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=200, blank=True)
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    eta = models.DateTimeField(null=True, blank=True)
    expires = models.DateTimeField(null=True, blank=True)

    state = models.CharField(
        max_length=10, choices=JobState.choices, default=JobState.PENDING, db_index=True
    )
    progress = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=500, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # Times the task began executing: above 1 means a retry or a redelivery.
    attempts = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    # The client's limits for this job (seconds; null: the task's own) and its retry
    # policy (null: the task's own), within the bounds the platform's settings allow.
    time_limit = models.FloatField(null=True, blank=True)
    soft_time_limit = models.FloatField(null=True, blank=True)
    retry_policy = models.JSONField(null=True, blank=True)

    # The client's ``Idempotency-Key`` for this submission and a digest of the request it
    # came with: the same key with the same request returns this job instead of a second
    # one; with another request it is refused (see ``api.idempotency``).
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    request_digest = models.CharField(max_length=64, blank=True)
    # A workflow's submission as the API took it (its shape and steps, without delivery
    # options), so it can be submitted again; null for a task, whose row holds it all.
    spec = models.JSONField(null=True, blank=True)
    # The periodic task whose run this is (its name; the job row is made when the run
    # starts, since beat publishes without the API).
    periodic_task = models.CharField(max_length=200, blank=True, default="")
    # The job this one re-runs; kept (null) when that job is deleted.
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns"
    )

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When a client asked to cancel. A job that was running then keeps its state until
    # the worker reports how it ended (revoked when terminated, else as it finished):
    # the row never shows a finish time for a task still running.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["parent", "position"]),
            models.Index(fields=["state", "finished_at"]),
        ]
        constraints = [
            # One job per key and owner: two retries racing each other cannot both insert.
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="job_owner_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.task_name or ''} {self.id} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    # Both read the prefetched ``steps`` when the view prefetched them.
    @property
    def workflow_steps(self) -> list[Job]:
        """The steps of a workflow, in position order (nested workflows among them)."""
        return sorted((s for s in self.steps.all() if not s.trigger), key=lambda s: s.position)

    @property
    def callbacks(self) -> list[Job]:
        """A task's link callbacks, then its link_error ones, each in submission order."""
        return sorted(
            (s for s in self.steps.all() if s.trigger),
            key=lambda s: (s.trigger != JobTrigger.LINK, s.position),
        )


class JobProgress(models.Model):
    """One progress report from a running task, kept so clients can replay the history."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="progress_events")
    percent = models.FloatField()
    message = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.job_id} {self.percent}% {self.message}"


class PeriodicTaskOwner(models.Model):
    """Who made a periodic task through the API (django-celery-beat's rows have no owner).

    A periodic task made in the admin has none: staff see it, users do not.
    """

    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="tide_owner"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="periodic_tasks"
    )

    def __str__(self) -> str:
        return f"{self.periodic_task_id} of {self.owner_id}"
