"""The team's Celery app as local mode needs to know it: its tasks, broker and queues.

``tide up --app myproject`` runs the team's workers, and must know before it starts them
which tasks the app registers (to refuse queues holding tasks it would discard, see
``tide.local.backlog``) and which broker and transport options its workers use (the
exporter, the probe and Flower must read and talk to exactly those). The app is loaded the
way ``celery -A myproject worker`` loads it (``find_app``, then
``loader.import_default_modules()``: the app's ``include``, its Django project's
autodiscovered tasks), in a child interpreter with the team's environment: this process
runs Tide's own Django settings and Celery app, which must not meet the team's (a second
Django project in one process, or Tide's app capturing the team's ``@shared_task``\\ s).
The child imports Celery and the app, prints one JSON object and exits.

Tide's reference app is read the same way (``tide`` with Tide's settings), so a pool file
naming foreign queues is refused for Tide's workers too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Tide's reference app, which ``tide up`` runs without ``--app``.
TIDE_APP = "tide"

_READ_APP = """\
import json, sys
from celery.app.utils import find_app
app = find_app(sys.argv[1])
app.loader.import_default_modules()
conf = app.conf
queues = [q.name for q in (conf.task_queues or [])] or [conf.task_default_queue]
print(json.dumps({
    "main": app.main,
    "tasks": sorted(app.tasks),
    "broker_url": conf.broker_write_url or conf.broker_url,
    "transport_options": dict(conf.broker_transport_options or {}),
    "queues": queues,
}, default=str))
"""


class AppError(RuntimeError):
    """The app could not be loaded; the message has the child's own words."""


@dataclass(frozen=True)
class AppInfo:
    """What an app registers and where its workers meet."""

    name: str
    tasks: frozenset[str]
    broker_url: str
    transport_options: Mapping[str, Any]
    queues: tuple[str, ...]


def read_app(name: str, *, env: Mapping[str, str], timeout: float = 120.0) -> AppInfo:
    """Load ``name`` as ``celery -A name`` would, in a child with ``env``; say what it holds."""
    result = subprocess.run(
        [sys.executable, "-c", _READ_APP, name],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise AppError(
            f"could not load the Celery app {name!r} (as `celery -A {name}` would): "
            + ("\n".join(detail[-15:]) or f"exit status {result.returncode}")
        )
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AppError(f"loading {name!r} printed no description: {result.stdout[-500:]}") from None
    return AppInfo(
        name=name,
        tasks=frozenset(data["tasks"]),
        broker_url=str(data["broker_url"]),
        transport_options=dict(data["transport_options"]),
        queues=tuple(data["queues"]),
    )
