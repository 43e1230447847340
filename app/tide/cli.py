"""``tide``: one command for every role of the image and for local use.

Each role (``api``, ``worker``, ``beat``, ``flower``, ``exporter``, ``operator``) ends in
``exec`` of the real program, so that program is the container's main process
and receives SIGTERM itself. Commands that need Django set it up lazily, so ``tide
simulate`` and ``tide --help`` start fast and need no database.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

DEFAULT_SETTINGS = "tide.settings.local"


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    import django

    django.setup()


def _exec(argv: list[str]) -> None:
    """Replace this process with ``argv`` (found on PATH or beside this Python)."""
    program = shutil.which(argv[0]) or str(Path(sys.executable).with_name(argv[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, [program, *argv[1:]])


class LazyGroup(click.Group):
    """A command group whose bigger commands are imported only when they run.

    ``tide api``, ``worker``, ``beat`` and ``flower`` end in ``exec`` of another program:
    importing local mode, the exporter, the operator and the simulator (numpy) first would
    cost each of them about a second of CPU for nothing, several times over when
    ``tide up`` starts the platform on two busy cores.
    """

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # command name -> "module:attribute"
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attribute)
            return command if isinstance(command, click.Command) else None
        return super().get_command(ctx, cmd_name)


# Commands owned by other packages, imported when named.
LAZY_COMMANDS = {
    "up": "tide.local.cli:up",
    "load": "tide.local.load:load",
    "simulate": "tide_operator.simulation.cli:simulate",
    "recommend": "tide_operator.simulation.cli:recommend_command",
    "exporter": "tide.exporter.cli:exporter",
    "operator": "tide_operator.edge.cli:operator_command",
}


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """Tide: Django + Celery whose workers scale from the work waiting for them."""


@main.command()
@click.option("--bind", default=None, help="host:port (default 0.0.0.0:8000).")
@click.option("--workers", type=int, default=None, help="gunicorn processes (default: cores).")
def api(bind: str | None, workers: int | None) -> None:
    """Serve the jobs API with gunicorn."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Per-process metrics are merged at scrape time from files in this directory.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tide-metrics-")
    argv = ["gunicorn", "tide.wsgi:application", "--config", "python:tide.gunicorn_conf"]
    if bind:
        argv += ["--bind", bind]
    if workers:
        argv += ["--workers", str(workers)]
    _exec(argv)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-Q", "--queues", default="default", show_default=True)
@click.option("-c", "--concurrency", type=int, default=None)
@click.option("-n", "--hostname", default=None, help="Celery node name (default worker@%h).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str, concurrency: int | None, hostname: str | None, celery_args: tuple[str, ...]
) -> None:
    """Run a Celery worker consuming QUEUES."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    argv = ["celery", "-A", "tide", "worker", "-Q", queues, "--loglevel", "INFO"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    argv += ["--hostname", hostname or "worker@%h", *celery_args]
    _exec(argv)


@main.command()
def beat() -> None:
    """Run Celery beat (periodic tasks). Run exactly one."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    # The schedule and its last run times live in the database (django-celery-beat's
    # DatabaseScheduler, CELERY_BEAT_SCHEDULER): no file, so the image's root filesystem
    # stays read-only and a restarted beat resumes where the last one stopped.
    _exec(["celery", "-A", "tide", "beat", "--loglevel", "INFO"])


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=int, default=5555, show_default=True)
@click.option(
    "--app",
    "app_name",
    default=None,
    envvar="TIDE_FLOWER_APP",
    help="Load this Celery app (celery -A APP flower). Default: none, the broker alone.",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, app_name: str | None, flower_args: tuple[str, ...]) -> None:
    """Run Flower, the Celery introspection UI (its /metrics too), for any app's workers.

    Flower needs the broker, not an app's code: everything it shows comes from the workers'
    events and remote control. So by default it runs on a bare Celery app with the broker
    URL and the transport options of Tide's settings (``CELERY_BROKER_URL``,
    ``TIDE_BROKER_TRANSPORT_OPTIONS``, ``CELERY_BROKER_KEYPREFIX``): the workers' own key
    prefix and layout, whichever app they run. It runs in a fresh interpreter that imports
    Celery alone: in this one, Tide's app would answer the bare app's module import and
    hand it Tide's tasks.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    argv = ["flower", f"--port={port}", *flower_args]
    if app_name:
        _exec(["celery", "-A", app_name, *argv])
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    conf = {
        "broker_url": url,
        # Read before a CELERY_BROKER_URL variable would be, so the URL is exactly this one.
        "broker_read_url": url,
        "broker_write_url": url,
        "broker_transport_options": dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS),
    }
    # Nor Django: with DJANGO_SETTINGS_MODULE set, Celery's Django fix-up would set Tide's
    # project up in Flower's process (``fixups=[]`` below says the same to Celery).
    os.environ.pop("DJANGO_SETTINGS_MODULE", None)
    _exec([sys.executable, "-c", FLOWER_ON_THE_BROKER, json.dumps(conf), *argv])


#: ``python -c``: Flower on a bare Celery app configured from argv[1] (JSON), nothing else.
FLOWER_ON_THE_BROKER = """\
import json, sys
from celery import Celery
app = Celery("tide-flower", fixups=[])
app.conf.update(json.loads(sys.argv[1]))
sys.exit(app.start(sys.argv[2:]))
"""


@main.command()
def migrate() -> None:
    """Apply database migrations (the chart runs this as a Job)."""
    _django()
    from django.core.management import call_command

    call_command("migrate", interactive=False)


@main.command(name="manage", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def manage_command(args: tuple[str, ...]) -> None:
    """Run a Django management command (``tide manage createsuperuser``)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    from django.core.management import execute_from_command_line

    execute_from_command_line(["tide manage", *args])


@main.command()
@click.argument("username")
def token(username: str) -> None:
    """Print an API token for USERNAME, creating the user if needed."""
    _django()
    from tide.jobs.accounts import ensure_token

    click.echo(ensure_token(username))


if __name__ == "__main__":
    main()
