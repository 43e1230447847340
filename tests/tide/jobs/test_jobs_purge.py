"""The periodic purge deletes finished jobs past the retention period, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tide.jobs import services
from tide.jobs.models import Job, JobKind, JobState

pytestmark = pytest.mark.django_db


def test_purge_keeps_recent_and_unfinished_jobs(settings: object) -> None:
    now = timezone.now()
    old = now - timedelta(days=30)
    expired = Job.objects.create(state=JobState.SUCCEEDED, finished_at=old)
    Job.objects.create(parent=expired, state=JobState.SUCCEEDED, finished_at=old)
    recent = Job.objects.create(state=JobState.FAILED, finished_at=now)
    running = Job.objects.create(state=JobState.STARTED)
    workflow_step_only = Job.objects.create(kind=JobKind.GROUP, state=JobState.PENDING)
    Job.objects.create(parent=workflow_step_only, state=JobState.SUCCEEDED, finished_at=old)

    assert services.purge_expired(now=now) == 2  # the old job and its step
    assert set(Job.objects.filter(parent__isnull=True).values_list("id", flat=True)) == {
        recent.id,
        running.id,
        workflow_step_only.id,
    }
