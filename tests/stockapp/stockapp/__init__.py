"""A stock Celery application, written the way teams write theirs, for Tide's tests.

Nothing here knows Tide except the one line that turns the integration on (see
``stockapp.celery``). Tests use it as the "user's own app": real ``celery -A stockapp
worker`` processes, producers that import it, and Tide's exporter, probe and local mode
pointed at it.

Where it lives: the package is ``tests/stockapp/stockapp/``; its parent, ``tests/stockapp``,
is on pytest's ``pythonpath`` (``pyproject.toml``), and ``stockapp_harness.STOCKAPP_PATH``
is what a test puts on ``PYTHONPATH`` for the worker processes it starts. ``stockapp_harness``
(beside the package) starts workers, publishes, and holds or releases the ``hold`` task.

As in Celery's documentation, importing the package creates the app, so
``celery -A stockapp`` finds it and ``@shared_task`` binds to it.
"""

from stockapp.celery import app as celery_app

__all__ = ["celery_app"]
