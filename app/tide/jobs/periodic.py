"""Periodic tasks users make, change, pause and delete at run time.

The store is django-celery-beat's (``PeriodicTask`` with an interval, crontab or clocked
schedule): the field's standard one, which beat's ``DatabaseScheduler`` reads and the
admin edits, so the API, the admin and beat share one truth. Beat notices a change on
its next tick (django-celery-beat bumps its change marker on every save and delete).
Tide adds only who made each task (``PeriodicTaskOwner``) and checks what goes in as a
submission is checked: a registered task whose arguments fit, a known queue.

Every state change lives here; the API's views and nothing else call these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

from tide.jobs.models import PeriodicTaskOwner
from tide.jobs.services import Step, transport_priority, validate_step


@dataclass(frozen=True)
class Schedule:
    """Exactly one of: every ``every`` ``period``; a crontab line in ``timezone``; once ``at``."""

    every: int | None = None
    period: str | None = None
    crontab: str | None = None
    timezone: str = "UTC"
    at: datetime | None = None


@dataclass(frozen=True)
class PeriodicSpec:
    """What a periodic task runs, when, and how (all optional on a change)."""

    name: str | None = None
    step: Step | None = None
    schedule: Schedule | None = None
    queue: str | None = None
    priority: int | None = None
    enabled: bool | None = None
    expires: datetime | None = None
    description: str | None = None


def _schedule_fields(schedule: Schedule) -> dict[str, Any]:
    """The schedule rows django-celery-beat expects (one kind set, the others None)."""
    fields: dict[str, Any] = {"interval": None, "crontab": None, "clocked": None}
    if schedule.every is not None:
        fields["interval"], _ = IntervalSchedule.objects.get_or_create(
            every=schedule.every, period=schedule.period
        )
        fields["one_off"] = False
    elif schedule.crontab is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.crontab.split()
        fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
            timezone=schedule.timezone,
        )
        fields["one_off"] = False
    else:
        # A clocked schedule runs once; django-celery-beat requires one_off with it.
        fields["clocked"] = ClockedSchedule.objects.create(clocked_time=schedule.at)
        fields["one_off"] = True
    return fields


def create(spec: PeriodicSpec, *, owner: Any) -> PeriodicTask:
    """Make a periodic task (raises UnknownTask/ArgumentsError before anything is saved)."""
    assert spec.name
    assert spec.step
    assert spec.schedule
    validate_step(spec.step, receives_result=False)
    with transaction.atomic():
        task = PeriodicTask(
            name=spec.name,
            task=spec.step.task,
            args=json.dumps(list(spec.step.args)),
            kwargs=json.dumps(dict(spec.step.kwargs)),
            queue=spec.queue,
            priority=None if spec.priority is None else transport_priority(spec.priority),
            enabled=True if spec.enabled is None else spec.enabled,
            expires=spec.expires,
            description=spec.description or "",
            **_schedule_fields(spec.schedule),
        )
        task.save()
        PeriodicTaskOwner.objects.create(periodic_task=task, owner=owner)
    return task


def change(task: PeriodicTask, spec: PeriodicSpec) -> PeriodicTask:
    """Apply the fields given (pausing is ``enabled=False``); beat sees it on its next tick."""
    if spec.step is not None:
        validate_step(spec.step, receives_result=False)
    with transaction.atomic():
        old_clocked = task.clocked
        if spec.name is not None:
            task.name = spec.name
        if spec.step is not None:
            task.task = spec.step.task
            task.args = json.dumps(list(spec.step.args))
            task.kwargs = json.dumps(dict(spec.step.kwargs))
        if spec.schedule is not None:
            for field, value in _schedule_fields(spec.schedule).items():
                setattr(task, field, value)
            # A paused-then-rescheduled one-off runs again: it has not run on this clock.
            task.total_run_count = 0 if task.one_off else task.total_run_count
        if spec.queue is not None:
            task.queue = spec.queue
        if spec.priority is not None:
            task.priority = transport_priority(spec.priority)
        if spec.enabled is not None:
            task.enabled = spec.enabled
        if spec.expires is not None:
            task.expires = spec.expires
        if spec.description is not None:
            task.description = spec.description
        task.save()
        if old_clocked is not None and task.clocked_id != old_clocked.id:
            old_clocked.delete()
    return task


def delete(task: PeriodicTask) -> None:
    """Delete a periodic task (runs already made stay as jobs); beat drops it next tick."""
    with transaction.atomic():
        clocked = task.clocked
        task.delete()
        if clocked is not None:
            clocked.delete()


def api_priority(task: PeriodicTask) -> int | None:
    """The stored (transport) priority in the API's scale (9 = most urgent)."""
    if task.priority is None:
        return None
    # transport_priority is its own inverse: 9 - (9 - p) on Redis, p elsewhere.
    return transport_priority(task.priority)


def describe_schedule(task: PeriodicTask) -> dict[str, Any]:
    if task.interval is not None:
        return {"every": task.interval.every, "period": task.interval.period}
    if task.crontab is not None:
        c = task.crontab
        line = f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"
        return {"crontab": line, "timezone": str(c.timezone)}
    if task.clocked is not None:
        return {"at": task.clocked.clocked_time}
    return {}
