"""Housekeeping tasks of the jobs app, run by beat."""

from __future__ import annotations

from celery import shared_task

from tide.jobs import services


@shared_task(name="tide.jobs.purge_expired")
def purge_expired() -> int:
    """Delete finished jobs past ``TIDE_JOB_RETENTION_SECONDS``; returns how many."""
    return services.purge_expired()
