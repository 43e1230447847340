from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "tide.jobs"
    label = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect the Celery signal receivers that keep job rows current; they run in
        # every process that loads Django, and only fire in workers.
        # The API validates submissions against the task registry, so every process that
        # runs Django (not only workers) must import the task modules now.
        # autodiscover_modules is what Django's admin uses for admin.py modules.
        from django.utils.module_loading import autodiscover_modules

        from tide.jobs import signals  # noqa: F401
        from tide.jobs.api import authentication

        authentication.connect()

        autodiscover_modules("tasks")
