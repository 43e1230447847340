"""``tide exporter``: the queue exporter as a role of the image (and of local mode).

Configuration comes from ``tide.celery.app`` (broker URL, transport options, routes,
``TIDE_QUEUES``) with options on top; the transport options are those of the workers
whose broker is read (``TIDE_BROKER_TRANSPORT_OPTIONS`` in the settings,
``--broker-transport-option`` here), kombu's defaults when none are given, as they must
name the same keys the workers use; every option also reads an environment variable so
the chart configures it without a command line. Django settings are imported for their
values only: the exporter needs no database.

The process serves until SIGTERM or SIGINT, then stops serving, stops the poller and closes
the broker connection, so a pod terminates in well under its grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

import click

from tide.exporter.config import DEFAULT_PORT


@click.command()
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, envvar="TIDE_EXPORTER_PORT"
)
@click.option("--host", default="0.0.0.0", show_default=True, envvar="TIDE_EXPORTER_HOST")
@click.option(
    "--queues",
    default="",
    envvar="TIDE_EXPORTER_QUEUES",
    help="Comma-separated queues to export, added to those the Celery app configures.",
)
@click.option(
    "--broker-url",
    default=None,
    envvar="TIDE_EXPORTER_BROKER_URL",
    help="Broker to read (default: the Celery app's broker_url).",
)
@click.option(
    "--broker-transport-option",
    "transport_option_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="A kombu transport option of the workers whose broker is read, as celery-exporter's "
    "(repeatable; e.g. global_keyprefix=myapp:). On top of TIDE_BROKER_TRANSPORT_OPTIONS "
    "(a JSON object); kombu's defaults otherwise.",
)
@click.option(
    "--rabbitmq-management-url",
    default=None,
    envvar="TIDE_RABBITMQ_MANAGEMENT_URL",
    help="e.g. http://guest:guest@rabbitmq:15672; needed for in-flight figures on RabbitMQ.",
)
@click.option(
    "--interval",
    type=float,
    default=2.0,
    show_default=True,
    envvar="TIDE_EXPORTER_INTERVAL",
    help="Seconds between reads of the broker (scrapes serve the last read).",
)
@click.option(
    "--discovery-interval",
    type=float,
    default=30.0,
    show_default=True,
    envvar="TIDE_EXPORTER_DISCOVERY_INTERVAL",
    help="Seconds between looks for new queues in the broker's bindings.",
)
def exporter(
    port: int,
    host: str,
    queues: str,
    broker_url: str | None,
    transport_option_items: tuple[str, ...],
    rabbitmq_management_url: str | None,
    interval: float,
    discovery_interval: float,
) -> None:
    """Serve per-queue depth, in-flight, scheduled and oldest age on /metrics."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")
    logging.basicConfig(
        level=os.environ.get("TIDE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from tide.celery import app
    from tide.exporter.config import from_app
    from tide_celery.layout import TransportOptionsError, parse_transport_option

    extra: dict[str, object] = {}
    for item in transport_option_items:
        try:
            extra.update(parse_transport_option(item))
        except TransportOptionsError as error:
            raise click.BadParameter(str(error), param_hint="--broker-transport-option") from None
    from tide.exporter.server import start_exporter

    config = from_app(
        app,
        queues=[name for name in queues.split(",") if name.strip()],
        broker_url=broker_url,
        transport_options=extra,
        management_url=rabbitmq_management_url,
        interval=interval,
        discovery_interval=discovery_interval,
        host=host,
        port=port,
    )
    stopping = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %s: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    running = start_exporter(config)
    click.echo(f"tide exporter: {len(config.queues)} configured queues, serving {running.url}")
    stopping.wait()
    running.stop()
