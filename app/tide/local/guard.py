"""Workers never start on tasks their app would throw away.

A Celery worker that receives a task its app does not register logs "Received unregistered
task of type …  The message has been ignored and discarded" and acknowledges it: the
message is gone, and an autoscaler that sees the queue empty calls it a success. That is
what ``tide up`` once did to a team's work, with Tide's app on the team's queues. So before
a pool's workers start (at ``tide up`` and before every scale-up), ``TaskGuard.check``
reads the head of the pool's queues (``tide.local.backlog``, nothing taken) and compares
the task names with what the pool's app registers (``tide.local.apps``):

* ``refuse`` (the default): the pool does not start, and the message names the pool, the
  app, each queue and the tasks the app does not know, and how to fix it; at start-up
  ``tide up`` exits before anything runs, later the pool stays as it is and reports
  ``Ready=False`` (reason ``UnknownTasks``) until the queue is right;
* ``report`` (``--unknown-tasks=report``): the same message, loudly, and the workers start
  (for a team that knows those messages are garbage).

Only the head of each queue is read (``backlog.DEFAULT_LIMIT`` messages per list), so a
foreign task deep in a long queue can pass the first check; it is found at a later one,
before the next scale-up, as the queue drains towards it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tide.local.apps import AppInfo
from tide.local.backlog import DEFAULT_LIMIT, peek

Mode = Literal["refuse", "report"]
MODES: tuple[Mode, ...] = ("refuse", "report")
#: The condition reason a refused pool reports while it waits.
UNKNOWN_TASKS = "UnknownTasks"


@dataclass(frozen=True)
class Finding:
    """Tasks waiting in a pool's queues that its app does not register."""

    pool: str
    app: str
    unknown: Mapping[str, Counter[str]]
    mode: Mode

    def message(self) -> str:
        listed = "; ".join(
            f"{queue}: " + ", ".join(f"{name} ({n})" for name, n in counts.most_common())
            for queue, counts in sorted(self.unknown.items())
        )
        text = (
            f"pool {self.pool!r}: the app {self.app!r} does not register the tasks waiting in "
            f"its queues ({listed}; among the first {DEFAULT_LIMIT} of each). Its workers "
            "would discard them as unregistered tasks. Run the pool with the app that "
            "defines them (tide up --app MODULE, or template.app in the pool file)"
        )
        if self.mode == "refuse":
            return text + ", or pass --unknown-tasks=report to start it anyway."
        return text + "; starting it anyway (--unknown-tasks=report)."


@dataclass(frozen=True)
class TaskGuard:
    """One pool's check: its app's tasks, the broker its workers read, what to do."""

    pool: str
    app: AppInfo
    mode: Mode = "refuse"

    def check(self, queues: Sequence[str]) -> Finding | None:
        """A finding when the head of ``queues`` holds tasks the app does not register."""
        backlog = peek(
            self.app.broker_url, transport_options=self.app.transport_options, queues=queues
        )
        unknown = backlog.unknown(self.app.tasks)
        if not unknown:
            return None
        return Finding(pool=self.pool, app=self.app.name, unknown=unknown, mode=self.mode)
