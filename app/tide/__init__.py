"""Tide: the Django project and Celery app.

The Celery app is imported here so that ``@shared_task`` binds to it wherever Django
starts (API, worker, beat), as the Celery documentation for Django recommends.
"""

from tide.celery import app as celery_app

__all__ = ["celery_app"]
