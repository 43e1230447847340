"""Tide's integration for an existing Celery app, turned on in one line::

    import tide_celery

    app = Celery("proj")
    tide_celery.install(app)

It gives Tide's exporter and operator what the broker alone cannot: the publish stamp
(age of the oldest waiting message), a per-queue completion counter (rates), an exact
count of running tasks per queue (true under early acks, Celery's default), and worker
node names the operator's idle-first scale-in can address (``worker@<host>``).

Importing this package does nothing but define names: no Celery app is created, no signal
is connected, no setting is read, so ``current_app`` and ``@shared_task`` stay the app's.
It depends on Celery and kombu only. See ``tide_celery.integration`` for what runs where,
``tide_celery.layout`` for the keys and headers Tide reads, and ``tide_celery.workers`` for
the running count's design and staleness bound.
"""

from tide_celery.integration import Integration, install, integration_for
from tide_celery.layout import PUBLISHED_AT_HEADER, transport_options_from_env

__version__ = "0.1.0"

__all__ = [
    "PUBLISHED_AT_HEADER",
    "Integration",
    "__version__",
    "install",
    "integration_for",
    "transport_options_from_env",
]
