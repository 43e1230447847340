"""The jobs in Django's admin (local mode routes it): browse, filter and search jobs.

Rows are read-only here: a job's state changes only through ``services`` (the API's
cancel, the workers' hooks), so the admin shows what happened and never edits it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from tide.jobs.models import Job, JobProgress


class ProgressInline(admin.TabularInline):
    model = JobProgress
    extra = 0
    can_delete = False
    readonly_fields = ("percent", "message", "at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "task_name", "queue", "state", "progress", "owner", "created_at")
    list_filter = ("state", "kind", "queue", "created_at")
    search_fields = ("id", "task_name", "error", "worker")
    date_hierarchy = "created_at"
    inlines = [ProgressInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
