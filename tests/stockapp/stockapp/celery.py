"""The stock app's Celery application: Celery's and kombu's defaults, configured from the
environment as a twelve-factor app is.

What makes it *stock* (and what Tide must cope with):

* kombu's default Redis transport options: no ``sep``, no ``priority_steps``, no
  ``queue_order_strategy``, so priorities land on kombu's four lists per queue (``orders``,
  ``orders\\x06\\x163``, ``…6``, ``…9``). The only option set is a ``global_keyprefix``, from
  ``STOCKAPP_KEYPREFIX``, so each test run has its own keyspace on a shared Redis;
* early acks (Celery's default): a running task's message is already acknowledged, so the
  broker cannot see it. ``STOCKAPP_ACKS_LATE=1`` selects late acks instead;
* a prefetch multiplier of 4, three queues (``orders``, ``emails``, ``reports``) with routes,
  priorities (``task_queue_max_priority`` for RabbitMQ; Redis always has its four lists);
* the default node name ``celery@<host>`` unless the command line gives ``-n``.

Tide's integration is the module's last line, as a team adds it; ``STOCKAPP_INTEGRATION=0``
leaves it out, for the "app without the integration" cases.

Environment: ``STOCKAPP_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``),
``STOCKAPP_KEYPREFIX``, ``STOCKAPP_ACKS_LATE``, ``STOCKAPP_INTEGRATION``,
``STOCKAPP_CONTROL_URL`` (the Redis where the ``hold`` task records itself, see
``stockapp.tasks``), and two settings teams often turn on: ``STOCKAPP_RESULT_BACKEND`` (a
result backend, e.g. the broker's Redis) and ``STOCKAPP_CANCEL_ON_CONNECTION_LOSS=1``
(``worker_cancel_long_running_tasks_on_connection_loss``, Celery 6's default).
"""

import os

from celery import Celery
from kombu import Queue

app = Celery("stockapp", include=["stockapp.tasks"])

transport_options = {}
if os.environ.get("STOCKAPP_KEYPREFIX"):
    transport_options["global_keyprefix"] = os.environ["STOCKAPP_KEYPREFIX"]

app.conf.update(
    broker_url=os.environ.get("STOCKAPP_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options=transport_options,
    broker_connection_retry_on_startup=True,
    task_queues=[Queue("orders"), Queue("emails"), Queue("reports")],
    task_default_queue="orders",
    task_routes={
        "stockapp.tasks.place_order": {"queue": "orders"},
        "stockapp.tasks.send_email": {"queue": "emails"},
        "stockapp.tasks.build_report": {"queue": "reports"},
    },
    task_queue_max_priority=10,
    task_acks_late=os.environ.get("STOCKAPP_ACKS_LATE", "") == "1",
    worker_prefetch_multiplier=4,
    task_ignore_result=True,
    worker_cancel_long_running_tasks_on_connection_loss=(
        os.environ.get("STOCKAPP_CANCEL_ON_CONNECTION_LOSS", "") == "1"
    ),
)
if os.environ.get("STOCKAPP_RESULT_BACKEND"):
    app.conf.result_backend = os.environ["STOCKAPP_RESULT_BACKEND"]

if os.environ.get("STOCKAPP_INTEGRATION", "1") != "0":
    import tide_celery

    tide_celery.install(app)
