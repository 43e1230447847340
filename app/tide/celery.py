"""The Celery application shared by the API (producer), workers, beat and the exporter.

Configuration comes from Django settings under the ``CELERY_`` namespace (see
``tide.settings.base`` for why each default suits autoscaled workers). Tide's reference
app turns Tide's integration on the way any team's app does, in one line
(``tide_celery.install``): the publish stamp for the oldest message's age, the per-queue
completion counter, the running count per queue, and the node names the operator
addresses. There is one home for each of those, ``tide_celery``; nothing is copied here.
"""

from __future__ import annotations

import os

from celery import Celery

import tide_celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")

app = Celery("tide")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Also puts back, after a lost broker connection, the messages of runs it cut (Redis).
tide_celery.install(app)
