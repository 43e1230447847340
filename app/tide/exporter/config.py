"""Which broker and which queues the exporter watches, from the Celery app's configuration.

A queue must be exported from the moment it is configured, before any worker exists, or a
pool at zero replicas never sees its first task. So the watch list is the union of what
the deployment declares, in this order: ``--queues``/``TIDE_EXPORTER_QUEUES``, Django's
``TIDE_QUEUES``, Celery's ``task_default_queue``, the queues named in ``task_routes`` and
``task_queues``; the poller adds queues found in the broker's bindings at run time.

Only configuration is read: Django settings are imported (``tide.settings.*`` is plain
Python) but ``django.setup()`` is never called and no database is touched, so the exporter
starts where the database is down or absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tide.exporter.readers import merge_names

DEFAULT_PORT = 9808


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    broker_url: str
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    queues: tuple[str, ...] = ()
    management_url: str | None = None
    interval: float = 2.0
    discovery_interval: float = 30.0
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT


def _route_queues(routes: Any) -> Iterable[str]:
    """Queue names in ``task_routes``: a mapping, or a list of mappings; callables skipped."""
    if isinstance(routes, Mapping):
        routes = [routes]
    if not isinstance(routes, list | tuple):
        return
    for table in routes:
        if not isinstance(table, Mapping):
            continue  # A router function: which queues it returns is unknowable here.
        for route in table.values():
            queue = route.get("queue") if isinstance(route, Mapping) else route
            name = getattr(queue, "name", queue)
            if isinstance(name, str):
                yield name


def _declared_queues(queues: Any) -> Iterable[str]:
    if isinstance(queues, Mapping):
        queues = queues.values()
    for queue in queues or ():
        name = getattr(queue, "name", queue)
        if isinstance(name, str):
            yield name


def _settings_queues() -> list[str]:
    try:
        from django.conf import settings

        return list(getattr(settings, "TIDE_QUEUES", []))
    except Exception:
        # Not running inside Tide's settings (a bare Celery app): only Celery's own config.
        return []


def app_queues(app: Any) -> list[str]:
    """The queues the Celery app (and Tide's settings) configure."""
    conf = app.conf
    return merge_names(
        _settings_queues(),
        [conf.task_default_queue or "celery"],
        _route_queues(conf.task_routes),
        _declared_queues(conf.task_queues),
    )


def from_app(
    app: Any,
    *,
    queues: Sequence[str] = (),
    broker_url: str | None = None,
    transport_options: Mapping[str, Any] | None = None,
    management_url: str | None = None,
    **overrides: Any,
) -> ExporterConfig:
    """An ``ExporterConfig`` from the Celery app, with command-line values on top."""
    conf = app.conf
    url = broker_url or conf.broker_read_url or conf.broker_url
    return ExporterConfig(
        broker_url=url,
        transport_options={**(conf.broker_transport_options or {}), **(transport_options or {})},
        queues=tuple(merge_names(queues, app_queues(app))),
        management_url=management_url,
        **overrides,
    )
