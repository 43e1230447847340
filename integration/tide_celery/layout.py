"""The words Tide's processes and an app's workers share on the broker: one home for each.

Everything here is a name or a small parser, so both sides import it without side effects:
the integration (in the app's producers and workers) writes these keys and headers, and
Tide's exporter and operator read them.

Redis keys live under the transport's ``global_keyprefix``, as kombu's own keys do, and
start with ``_tide.`` (a leading underscore, like kombu's ``_kombu.binding.*``), so they
never collide with a queue name:

* ``_tide.completed`` (hash): queue -> messages that left it (``tide_celery.completions``);
* ``_tide.workers`` (sorted set): worker node name -> the Unix time its registration
  expires, renewed by the worker's heartbeat (``tide_celery.running``);
* ``_tide.worker.<node>`` (hash, with a TTL): the queues that worker consumes (field
  ``queues``, a JSON list) and one field ``task:<task id>`` -> queue per task it runs now;
* ``_tide.tasks`` (hash): per queue and task name, how runs ended, how long they ran and
  how long they waited, as counters (``tide_celery.outcomes``): fields are ``task_field``
  tuples joined by ``FIELD_SEP``, values integers, or floats for the ``sum`` fields.
* ``_tide.held.<node>`` (hash): delivery tag -> JSON ``[incarnation, task id]`` for every
  message that worker received and may not have acknowledged yet (``tide_celery.holdings``);
* ``_tide.lease.<node>.<incarnation>`` (string with a TTL): the lease one run of that
  worker renews while it lives; recovery never touches the holdings of a live lease;
* ``_tide.recovered`` (hash): queue -> messages dead workers held that recovery put back
  (``tide_celery.recovery``);
* ``_tide.redelivered`` (list, capped, with a TTL): one JSON notice
  ``[task id, node, queue, unix time]`` per message recovery put back, taken by the app's
  workers that listen for them (``tide_celery.redeliveries``).

Priority sub-queues, separators and the unacked keys are kombu's, not Tide's: readers ask
kombu's Redis channel for them (``_q_for_pri``, ``priority_steps``, ``sep``), configured
with the same transport options as the app (``transport_options_from_env``), so nothing
here restates kombu's layout.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

#: Message header with the publish time (Unix seconds, float), set by every producer.
PUBLISHED_AT_HEADER = "published_at"

COMPLETED_KEY = "_tide.completed"
TASKS_KEY = "_tide.tasks"
RECOVERED_KEY = "_tide.recovered"
REDELIVERED_KEY = "_tide.redelivered"
#: At most this many notices wait in ``_tide.redelivered`` (the oldest go first), for at
#: most ``REDELIVERED_TTL`` seconds after the last one: an app whose workers never take
#: them (no receiver of ``tide_celery.redeliveries.redelivered``) keeps a bounded list.
REDELIVERED_MAX = 10_000
REDELIVERED_TTL = 3600
HELD_KEY_PREFIX = "_tide.held."
LEASE_KEY_PREFIX = "_tide.lease."
WORKERS_KEY = "_tide.workers"
WORKER_KEY_PREFIX = "_tide.worker."
QUEUES_FIELD = "queues"
TASK_FIELD_PREFIX = "task:"

#: Seconds between a worker's heartbeats, and how long a registration outlives the last
#: one. A worker that dies without a word stops being counted at most ``WORKER_TTL``
#: seconds after its last heartbeat: three missed beats, so one slow beat is no outage.
HEARTBEAT_INTERVAL = 5.0
WORKER_TTL = 3 * HEARTBEAT_INTERVAL

#: Seconds between renewals of a worker's lease, and how long a lease outlives the last
#: renewal. Recovery waits for the lease of a worker reported dead to lapse, so this bounds
#: how long a dead worker's messages wait after its death is seen (``LEASE_TTL`` at most,
#: against the transport's visibility timeout, an hour or more); three missed renewals
#: in a row are needed before a live worker's lease lapses.
LEASE_INTERVAL = 2.0
LEASE_TTL = 3 * LEASE_INTERVAL

#: The node name the integration gives a worker started without ``-n``: ``worker@<host>``.
#: On Kubernetes the host is the pod's name, which is how Tide's operator addresses it.
NODE_NAME = "worker"

#: Environment variable holding the broker transport options (a JSON object) of the app
#: whose broker Tide's processes read or talk to.
TRANSPORT_OPTIONS_ENV = "TIDE_BROKER_TRANSPORT_OPTIONS"


#: Separates the parts of a ``_tide.tasks`` field; a control character no queue, task or
#: exception name holds.
FIELD_SEP = "\x1f"

#: Kinds of ``_tide.tasks`` fields: ``state`` (a run that ended in a Celery state:
#: SUCCESS, FAILURE, RETRY, IGNORED, REJECTED), ``failure`` (a FAILURE, by exception
#: class), ``runtime`` and ``wait`` (a histogram: one field per bucket the observation
#: fell in, its upper bound's index in ``BUCKETS``, and one ``sum`` field in seconds).
STATE, FAILURE, RUNTIME, WAIT = "state", "failure", "runtime", "wait"
SUM = "sum"

#: Upper bounds (seconds) of the runtime and wait histograms, ``+Inf`` implied. Celery
#: tasks run from milliseconds to an hour, so prometheus-client's default buckets (which
#: stop at 10 s) would put every long task in ``+Inf``; these keep the default's low end
#: and add minutes. Fixed here, because workers write bucket indexes and the exporter
#: reads them: both sides must agree.
BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


def bucket_of(seconds: float) -> int:
    """Index in ``BUCKETS`` of the first bound >= ``seconds``; ``len(BUCKETS)`` for +Inf."""
    for index, bound in enumerate(BUCKETS):
        if seconds <= bound:
            return index
    return len(BUCKETS)


def tasks_field(kind: str, queue: str, task: str, part: str) -> str:
    """A ``_tide.tasks`` field: what it counts, the queue, the task and the part
    (the state, the exception class, a bucket index or ``sum``)."""
    return FIELD_SEP.join((kind, queue, task, part))


def parse_tasks_field(name: str) -> tuple[str, str, str, str] | None:
    """``(kind, queue, task, part)`` of a ``_tide.tasks`` field, ``None`` if malformed."""
    parts = name.split(FIELD_SEP)
    if len(parts) != 4:
        return None
    return parts[0], parts[1], parts[2], parts[3]


def worker_key(node: str) -> str:
    """The hash of one worker node (unprefixed)."""
    return WORKER_KEY_PREFIX + node


def task_field(task_id: str) -> str:
    return TASK_FIELD_PREFIX + task_id


def held_key(node: str) -> str:
    """The hash of the deliveries one worker node holds (unprefixed)."""
    return HELD_KEY_PREFIX + node


def lease_key(node: str, incarnation: str) -> str:
    """The lease of one run (incarnation) of a worker node (unprefixed)."""
    return f"{LEASE_KEY_PREFIX}{node}.{incarnation}"


class TransportOptionsError(ValueError):
    """Transport options that cannot be read; the message says what to write instead."""


def parse_transport_options(text: str, *, source: str = TRANSPORT_OPTIONS_ENV) -> dict[str, Any]:
    """A JSON object of kombu transport options, e.g. ``{"global_keyprefix": "app:"}``."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise TransportOptionsError(
            f"{source} must be a JSON object such as "
            f'{{"global_keyprefix": "myapp:"}}; could not parse it: {error}'
        ) from None
    if not isinstance(value, dict):
        raise TransportOptionsError(
            f"{source} must be a JSON object (name: value), not {type(value).__name__}"
        )
    return value


def parse_transport_option(text: str) -> dict[str, Any]:
    """One ``name=value`` option, as celery-exporter's ``--broker-transport-option``.

    The value is read as JSON when it parses (``priority_steps=[0,3,6,9]``,
    ``visibility_timeout=3600``), else kept as a string (``sep=:``,
    ``global_keyprefix=myapp:``).
    """
    name, equals, raw = text.partition("=")
    name = name.strip()
    if not equals or not name:
        raise TransportOptionsError(
            f"transport option {text!r} is not name=value (e.g. global_keyprefix=myapp:)"
        )
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return {name: value}


def transport_options_from_env(
    options: Iterable[str] = (), *, environ: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """Transport options from ``TIDE_BROKER_TRANSPORT_OPTIONS`` and ``name=value`` items.

    ``None`` when neither is given, so the caller can fall back to its own configuration;
    an empty JSON object means "kombu's defaults" and is returned as ``{}``. Items given
    one by one override the environment's.
    """
    env = os.environ if environ is None else environ
    text = env.get(TRANSPORT_OPTIONS_ENV)
    items = list(options)
    if text is None and not items:
        return None
    merged = parse_transport_options(text or "")
    for item in items:
        merged.update(parse_transport_option(item))
    return merged
