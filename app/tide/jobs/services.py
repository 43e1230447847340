"""Every change to a job's state, in one place (Zulip's ``actions`` style).

Views call ``submit_*`` and ``cancel_job``; the worker-side hooks in ``tracking`` and
``signals`` call ``mark_*``; beat calls ``purge_expired``. Two rules shape this module:

* **Publish after commit.** A job's message is published only once its row is committed
  (``transaction.on_commit``), so a worker can never receive a task whose row it cannot
  see. If the broker refuses the publish, the row is deleted again and the caller gets
  ``BrokerUnavailable``: no row is left claiming a job was queued when it was not.
* **Final states are final.** Updates from workers are conditional (``state NOT IN
  final``), so a late or redelivered message cannot move a finished job backwards, and a
  job cancelled while waiting is not run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import chain, chord, group
from celery.canvas import Signature
from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from tide.celery import app
from tide.jobs.models import FINAL_STATES, Job, JobKind, JobProgress, JobState, JobTrigger
from tide.jobs.registry import (
    ArgumentsError,
    check_arguments,
    default_queue,
    get_task,
    registered_tasks,
)

logger = logging.getLogger(__name__)


class UnknownTask(LookupError):
    def __init__(self, name: str, *, loc: Sequence[Any] = ()) -> None:
        self.name = name
        # Where in the request the name was (a nested step, a callback); () at the top.
        self.loc = list(loc)
        self.known = list(registered_tasks())
        super().__init__(f"unknown task {name!r}")


class BrokerUnavailable(RuntimeError):
    """The broker did not accept the publish; nothing was queued or kept."""


class BulkPartlyQueued(BrokerUnavailable):
    """The broker failed part-way through a bulk submission: ``queued`` were published
    (and will run); the rest were not, and their rows are gone."""

    def __init__(self, message: str, *, queued: list[Job]) -> None:
        self.queued = queued
        super().__init__(message)


class JobConflict(RuntimeError):
    """The job is not in a state the request can act on; ``code`` names why."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class Step:
    """One task of a submission: what to run and with which arguments."""

    task: str
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    # A step that ignores its predecessor's result (Celery's immutable signature).
    immutable: bool = False
    # Callbacks (Celery's ``link``/``link_error``): tasks run when this one succeeds (with
    # its result first, unless immutable) or fails (with its task id first).
    link: tuple[Step, ...] = ()
    link_error: tuple[Step, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "queue": self.queue,
            "immutable": self.immutable,
        }
        if self.link:
            data["link"] = [c.as_dict() for c in self.link]
        if self.link_error:
            data["link_error"] = [c.as_dict() for c in self.link_error]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            task=data["task"],
            args=tuple(data.get("args", ())),
            kwargs=dict(data.get("kwargs", {})),
            queue=data.get("queue"),
            immutable=bool(data.get("immutable", False)),
            link=tuple(cls.from_dict(c) for c in data.get("link", ())),
            link_error=tuple(cls.from_dict(c) for c in data.get("link_error", ())),
        )

    @property
    def callbacks(self) -> list[tuple[str, Step]]:
        links: list[tuple[str, Step]] = [(JobTrigger.LINK, c) for c in self.link]
        return links + [(JobTrigger.LINK_ERROR, c) for c in self.link_error]


@dataclass(frozen=True)
class Workflow:
    """A chain, group or chord whose steps are tasks or workflows of their own (Celery's
    nested canvases: ``chain(a, group(b, c), d)``), at most ``MAX_DEPTH`` levels deep."""

    kind: JobKind
    steps: tuple[Step | Workflow, ...]
    # A chord's body: a task, run with the list of the header's results.
    callback: Step | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": str(self.kind),
            "steps": [step.as_dict() for step in self.steps],
            "callback": self.callback.as_dict() if self.callback else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workflow:
        callback = data.get("callback")
        return cls(
            kind=JobKind(data["type"]),
            steps=tuple(
                cls.from_dict(s) if "type" in s else Step.from_dict(s) for s in data["steps"]
            ),
            callback=Step.from_dict(callback) if callback else None,
        )


# How deep workflows nest: a workflow, a workflow among its steps, and one among those.
# The OpenAPI schema spells each level out (it is not recursive), so this is fixed.
MAX_DEPTH = 3
# Callbacks of each kind one task may have.
MAX_CALLBACKS = 5


@dataclass(frozen=True)
class RetryPolicy:
    """How a job retries the errors its task retries (Celery's words and meaning).

    ``max_retries`` replaces the task's own; ``backoff`` (seconds) waits ``backoff * 2**n``
    before retry ``n + 1``, at most ``backoff_max``, a random part of it with ``jitter``.
    The API checks them against the platform's bounds before anything is recorded.
    """

    max_retries: int | None = None
    backoff: float | None = None
    backoff_max: float | None = None
    jitter: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "backoff": self.backoff,
            "backoff_max": self.backoff_max,
            "jitter": self.jitter,
        }


@dataclass(frozen=True)
class Options:
    """Delivery options shared by every step of a submission."""

    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    # Per-job limits (seconds) and retry policy; None keeps the task's own.
    time_limit: float | None = None
    soft_time_limit: float | None = None
    retry: RetryPolicy | None = None

    def eta_at(self, now: datetime) -> datetime | None:
        if self.eta is not None:
            return self.eta
        if self.countdown:
            return now + timedelta(seconds=self.countdown)
        return None


# --- Submitting ---------------------------------------------------------------------


def validate_step(step: Step, *, receives_result: bool, loc: Sequence[Any] = ()) -> None:
    """Check a task step and its callbacks; errors name where they are (``loc``)."""
    if get_task(step.task) is None:
        raise UnknownTask(step.task, loc=[*loc, "task"])
    args = list(step.args)
    if receives_result and not step.immutable:
        # Celery passes the previous result as the first argument; a placeholder stands
        # in for it so the rest still binds, and its type is only known at run time.
        args = [_PREVIOUS_RESULT, *args]
    try:
        check_arguments(step.task, args, dict(step.kwargs), placeholder=_PREVIOUS_RESULT)
    except ArgumentsError as exc:
        if not loc:
            raise
        errors = [{**e, "loc": [*loc, *e.get("loc", [])]} for e in exc.errors]
        raise ArgumentsError(exc.task_name, errors) from None
    for trigger, callbacks in (("link", step.link), ("link_error", step.link_error)):
        if len(callbacks) > MAX_CALLBACKS:
            raise ArgumentsError(
                step.task,
                [{"loc": [*loc, trigger], "msg": f"at most {MAX_CALLBACKS} callbacks"}],
            )
        for index, callback in enumerate(callbacks):
            if callback.link or callback.link_error:
                raise ArgumentsError(
                    callback.task,
                    [{"loc": [*loc, trigger, index], "msg": "a callback takes no callbacks"}],
                )
            # A link gets the task's result first; a link_error the failed task's id
            # (Celery's errback of a bound task): both stand in as the placeholder.
            validate_step(callback, receives_result=True, loc=[*loc, trigger, index])


def validate_workflow(
    workflow: Workflow, *, receives_result: bool = False, loc: Sequence[Any] = (), depth: int = 1
) -> int:
    """Check a (nested) workflow; returns how many tasks it holds, callbacks included."""
    kind = workflow.kind
    if depth > MAX_DEPTH:
        raise ArgumentsError(
            kind,
            [
                {
                    "loc": list(loc),
                    "msg": f"workflows nest at most {MAX_DEPTH} levels deep; this one is at "
                    f"level {depth}: flatten it or submit it as a workflow of its own",
                }
            ],
        )
    if not workflow.steps:
        raise ArgumentsError(kind, [{"loc": [*loc, "steps"], "msg": "a workflow needs steps"}])
    if (kind == JobKind.CHORD) != (workflow.callback is not None):
        raise ArgumentsError(
            kind,
            [{"loc": [*loc, "callback"], "msg": "a chord, and only a chord, has a callback"}],
        )
    count = 0
    for index, step in enumerate(workflow.steps):
        # In a chain each step after the first gets the previous result; a group's and a
        # chord header's members all get what the workflow itself gets.
        gets = receives_result if kind != JobKind.CHAIN or index == 0 else True
        where = [*loc, "steps", index]
        if isinstance(step, Workflow):
            count += validate_workflow(step, receives_result=gets, loc=where, depth=depth + 1)
        else:
            validate_step(step, receives_result=gets, loc=where)
            count += 1 + len(step.callbacks)
    if workflow.callback is not None:
        validate_step(workflow.callback, receives_result=True, loc=[*loc, "callback"])
        count += 1 + len(workflow.callback.callbacks)
    return count


_PREVIOUS_RESULT = object()


def _route_queue(task_name: str, options: Options, step: Step | None = None) -> str:
    if step is not None and step.queue:
        return step.queue
    if options.queue:
        return options.queue
    return default_queue(task_name)


def _option_fields(options: Options, now: datetime) -> dict[str, Any]:
    """The columns a task row and a workflow row both take from the submission's options."""
    return {
        "priority": options.priority,
        "eta": options.eta_at(now),
        "expires": options.expires,
        "time_limit": options.time_limit,
        "soft_time_limit": options.soft_time_limit,
        "retry_policy": options.retry.as_dict() if options.retry else None,
    }


def _new_row(step: Step, options: Options, *, owner: Any, now: datetime, **extra: Any) -> Job:
    return Job(
        kind=JobKind.TASK,
        owner=owner,
        task_name=step.task,
        args=list(step.args),
        kwargs=dict(step.kwargs),
        queue=_route_queue(step.task, options, step),
        **_option_fields(options, now),
        **extra,
    )


# Message header naming a step's workflow row: the worker refreshes the workflow only for
# messages that carry it, so a plain task pays no extra query.
WORKFLOW_HEADER = "tide_workflow"
# Message header carrying a job's own retry policy (``RetryPolicy.as_dict``); Celery copies
# a message's headers onto its retries, so every attempt follows the same policy.
RETRY_HEADER = "tide_retry"


# Message header of a task that has callbacks: when it ends, the callbacks that will now
# never fire (link_error of a success, link of a failure) are settled.
CALLBACKS_HEADER = "tide_callbacks"


def _signature(
    job: Job,
    step: Step,
    options: Options,
    *,
    keep_result: bool,
    callbacks: Sequence[tuple[Job, Step]] = (),
) -> Signature:
    sig = app.signature(
        step.task,
        args=tuple(step.args),
        kwargs=dict(step.kwargs),
        immutable=step.immutable,
    )
    delivery: dict[str, Any] = {"task_id": str(job.id), "queue": job.queue}
    headers: dict[str, Any] = {}
    if job.parent_id and not job.trigger:
        headers[WORKFLOW_HEADER] = str(job.parent_id)
    if callbacks:
        headers[CALLBACKS_HEADER] = "1"
    if options.retry is not None:
        headers[RETRY_HEADER] = options.retry.as_dict()
    if headers:
        delivery["headers"] = headers
    # The worker enforces these per message; a limit not given keeps the task's own.
    if options.time_limit is not None:
        delivery["time_limit"] = options.time_limit
    if options.soft_time_limit is not None:
        delivery["soft_time_limit"] = options.soft_time_limit
    if not keep_result:
        # Results live in the job row; the result backend is only needed by a chord,
        # which counts its header's results there. Skipping it saves a write per task.
        delivery["ignore_result"] = True
    if options.priority is not None:
        delivery["priority"] = transport_priority(options.priority)
    sig = sig.set(**delivery)
    for row, callback in callbacks:
        # Celery's own mechanism: the worker publishes them when the task ends.
        attach = sig.link if row.trigger == JobTrigger.LINK else sig.link_error
        attach(_signature(row, callback, options, keep_result=False))
    return sig


def _task_rows(
    step: Step, options: Options, *, owner: Any, now: datetime, **extra: Any
) -> tuple[Job, list[tuple[Job, Step]]]:
    """A task's row and a row per callback (its ``parent``, with the ``trigger``)."""
    row = _new_row(step, options, owner=owner, now=now, **extra)
    callbacks = [
        (_callback_row(callback, options, row, trigger, index, owner=owner, now=now), callback)
        for index, (trigger, callback) in enumerate(step.callbacks)
    ]
    return row, callbacks


def _callback_row(
    callback: Step,
    options: Options,
    parent: Job,
    trigger: str,
    index: int,
    *,
    owner: Any,
    now: datetime,
) -> Job:
    # A callback runs when its task ends, not at the submission's eta.
    row = _new_row(callback, options, owner=owner, now=now, parent=parent, position=index)
    row.trigger = trigger
    row.eta = None
    return row


def transport_priority(priority: int) -> int:
    """Map the API's priority (9 = most urgent) onto the broker's scale.

    RabbitMQ delivers higher numbers first; Celery's Redis transport delivers *lower*
    numbers first. Clients should not have to know which broker runs underneath.
    """
    if app.conf.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        return 9 - priority
    return priority


def _delivery_options(options: Options) -> dict[str, Any]:
    delivery: dict[str, Any] = {}
    if options.countdown:
        delivery["countdown"] = options.countdown
    if options.eta is not None:
        delivery["eta"] = options.eta
    if options.expires is not None:
        delivery["expires"] = options.expires
    return delivery


def _publish_after_commit(job: Job, publish: Any) -> None:
    """Publish once the row is committed; on broker failure remove the row again."""

    def run() -> None:
        try:
            publish()
        except (KombuOperationalError, OSError) as exc:
            logger.warning("broker refused job %s: %s", job.id, exc)
            # The row was committed moments ago and nothing was queued: delete it (its
            # steps cascade) so no job claims to be waiting.
            Job.objects.filter(id=job.id).delete()
            raise BrokerUnavailable(str(exc)) from exc

    # robust=False: the failure must reach the caller, who answers 503.
    transaction.on_commit(run, robust=False)


@dataclass(frozen=True)
class Idempotency:
    """A client's ``Idempotency-Key`` and the digest of the request it came with."""

    key: str
    digest: str

    def fields(self) -> dict[str, str]:
        return {"idempotency_key": self.key, "request_digest": self.digest}


def submit_task(
    *,
    step: Step,
    options: Options,
    owner: Any = None,
    idempotency: Idempotency | None = None,
    rerun_of: Job | None = None,
) -> Job:
    """Record and publish one task. Raises UnknownTask, ArgumentsError, BrokerUnavailable,
    and IntegrityError when another request with the same idempotency key won the race."""
    validate_step(step, receives_result=False)
    extra: dict[str, Any] = idempotency.fields() if idempotency else {}
    if rerun_of is not None:
        extra["rerun_of"] = rerun_of
    if step.callbacks:
        # Kept for a re-run: the row holds the call, the spec its callbacks.
        extra["spec"] = {k: v for k, v in step.as_dict().items() if k.startswith("link")}
    job, callbacks = _task_rows(step, options, owner=owner, now=timezone.now(), **extra)
    # One INSERT needs no transaction block of its own (that would add BEGIN and COMMIT
    # round trips): in autocommit it is committed when it returns, and on_commit then
    # publishes at once. Inside a caller's transaction, on_commit waits for its commit.
    # A task with callbacks is one multi-row INSERT (the callbacks' rows with it).
    if callbacks:
        Job.objects.bulk_create([job, *(row for row, _ in callbacks)])
    else:
        job.save(force_insert=True)
    sig = _signature(job, step, options, keep_result=False, callbacks=callbacks)
    _publish_after_commit(job, lambda: sig.apply_async(**_delivery_options(options)))
    return job


def submit_tasks(
    items: Sequence[tuple[Step, Options]],
    *,
    owner: Any = None,
    idempotency: Sequence[Idempotency | None] | None = None,
) -> list[Job]:
    """Record N tasks in one transaction, then publish each (one message per job).

    Everything is checked before anything is written: one bad item refuses the whole
    request, with its index in the error. The rows go in with one multi-row ``INSERT``;
    after commit each job is published on one producer. If the broker fails part-way, the
    jobs published so far stay (they will run), the rest are deleted, and
    ``BulkPartlyQueued`` says which were queued.
    """
    for index, (step, _) in enumerate(items):
        try:
            validate_step(step, receives_result=False)
        except ArgumentsError as exc:
            errors = [{**e, "loc": ["jobs", index, *e.get("loc", [])]} for e in exc.errors]
            raise ArgumentsError(exc.task_name, errors) from None
    now = timezone.now()
    keys = idempotency or [None] * len(items)
    made = [
        _task_rows(
            step,
            options,
            owner=owner,
            now=now,
            **(key.fields() if key else {}),
            **(
                {"spec": {k: v for k, v in step.as_dict().items() if k.startswith("link")}}
                if step.callbacks
                else {}
            ),
        )
        for (step, options), key in zip(items, keys, strict=True)
    ]
    rows = [row for row, _ in made]
    with transaction.atomic():
        Job.objects.bulk_create([*rows, *(c for _, cbs in made for c, _ in cbs)])

        def publish() -> None:
            done = 0
            try:
                # One producer (one pooled connection) for the whole batch; each job is
                # still its own message, as if submitted alone.
                with app.producer_or_acquire() as producer:
                    for (step, options), (row, callbacks) in zip(items, made, strict=True):
                        sig = _signature(row, step, options, keep_result=False, callbacks=callbacks)
                        sig.apply_async(producer=producer, **_delivery_options(options))
                        done += 1
            except (KombuOperationalError, OSError) as exc:
                logger.warning("broker refused bulk job %s of %s: %s", done, len(rows), exc)
                Job.objects.filter(id__in=[row.id for row in rows[done:]]).delete()
                raise BulkPartlyQueued(str(exc), queued=rows[:done]) from exc

        transaction.on_commit(publish, robust=False)
    return rows


def submit_workflow(
    *,
    kind: JobKind,
    steps: Sequence[Step | Workflow],
    options: Options,
    callback: Step | None = None,
    owner: Any = None,
    idempotency: Idempotency | None = None,
    rerun_of: Job | None = None,
) -> Job:
    """Record and publish a chain, group or chord of registered tasks and of nested
    workflows (``MAX_DEPTH`` levels at most, ``TIDE_WORKFLOW_MAX_TASKS`` tasks).

    Every workflow, nested ones too, is a row whose steps are its children (``parent``,
    ``position``); every task's row id is its Celery task id. The top row's id is the
    group's id.
    """
    workflow = Workflow(kind=kind, steps=tuple(steps), callback=callback)
    tasks = validate_workflow(workflow)
    bound = settings.TIDE_WORKFLOW_MAX_TASKS
    if tasks > bound:
        raise ArgumentsError(
            kind,
            [
                {
                    "loc": ["steps"],
                    "msg": f"{tasks} tasks (nested steps and callbacks counted) is above this "
                    f"platform's bound of {bound} per workflow (TIDE_WORKFLOW_MAX_TASKS)",
                }
            ],
        )
    nested = any(isinstance(step, Workflow) for step in steps)
    now = timezone.now()
    with transaction.atomic():
        parent = _workflow_row(kind, options, owner=owner, now=now)
        parent.spec = workflow.as_dict()
        parent.rerun_of = rerun_of
        for name, value in (idempotency.fields() if idempotency else {}).items():
            setattr(parent, name, value)
        rows: list[Job] = []
        # A chord counts its header's results in the result backend, and Celery turns a
        # group followed by more steps into a chord: nested workflows keep every result.
        canvas = _canvas(
            workflow,
            parent,
            options,
            rows=rows,
            owner=owner,
            now=now,
            keep_result=nested or kind == JobKind.CHORD,
        )
        parent.save(force_insert=True)
        Job.objects.bulk_create(rows)
        delivery = _delivery_options(options)
        if kind != JobKind.CHAIN:
            delivery["group_id"] = str(parent.id)
        _publish_after_commit(parent, lambda: canvas.apply_async(**delivery))
    return parent


def _workflow_row(
    kind: JobKind, options: Options, *, owner: Any, now: datetime, **extra: Any
) -> Job:
    return Job(
        kind=kind, owner=owner, queue=options.queue or "", **_option_fields(options, now), **extra
    )


def _canvas(
    workflow: Workflow,
    row: Job,
    options: Options,
    *,
    rows: list[Job],
    owner: Any,
    now: datetime,
    keep_result: bool,
) -> Signature:
    """The Celery canvas of ``workflow`` (whose row is ``row``); appends the rows of its
    steps, nested workflows and callbacks to ``rows``, parents before children."""
    sigs: list[Signature] = []
    members: list[Step | Workflow] = [
        *workflow.steps,
        *([workflow.callback] if workflow.callback else []),
    ]
    for position, member in enumerate(members):
        if isinstance(member, Workflow):
            child = _workflow_row(
                member.kind, options, owner=owner, now=now, parent=row, position=position
            )
            rows.append(child)
            sigs.append(
                _canvas(
                    member,
                    child,
                    options,
                    rows=rows,
                    owner=owner,
                    now=now,
                    keep_result=keep_result,
                )
            )
            continue
        task_row, callbacks = _task_rows(
            member, options, owner=owner, now=now, parent=row, position=position
        )
        rows.append(task_row)
        rows.extend(callback_row for callback_row, _ in callbacks)
        sigs.append(
            _signature(task_row, member, options, keep_result=keep_result, callbacks=callbacks)
        )
    if workflow.kind == JobKind.CHAIN:
        return chain(*sigs)
    if workflow.kind == JobKind.GROUP:
        return group(*sigs)
    return chord(group(*sigs[:-1]), sigs[-1])


def _finished_top_level(job: Job, *, doing: str) -> None:
    if job.parent_id is not None:
        raise JobConflict(
            "job_is_a_step",
            f"This job is a step of workflow {job.parent_id}; {doing} the workflow instead.",
        )
    if not job.is_final:
        raise JobConflict(
            "job_not_finished",
            f"The job is {job.state}; wait for it to finish or cancel it first, then {doing} it.",
        )


def delete_job(job: Job) -> None:
    """Delete a finished job with its steps and progress history.

    Unfinished work is refused rather than revoked on the side: a client that means to
    stop a job says so with cancel, and never loses a running job to a stray DELETE.
    """
    _finished_top_level(job, doing="delete")
    Job.objects.filter(id=job.id).delete()


def rerun_job(job: Job, *, owner: Any = None, idempotency: Idempotency | None = None) -> Job:
    """Submit a finished job again as a new job (``rerun_of`` points back).

    The same task or workflow, arguments, queue, priority, limits and retry policy; not its
    timing (an ``eta`` or expiry in the past would mean nothing now).
    """
    _finished_top_level(job, doing="re-run")
    options = Options(
        queue=job.queue or None,
        priority=job.priority,
        time_limit=job.time_limit,
        soft_time_limit=job.soft_time_limit,
        retry=RetryPolicy(**job.retry_policy) if job.retry_policy else None,
    )
    if job.kind == JobKind.TASK:
        links = job.spec or {}
        step = Step.from_dict(
            {"task": job.task_name, "args": job.args, "kwargs": job.kwargs, **links}
        )
        return submit_task(
            step=step, options=options, owner=owner, idempotency=idempotency, rerun_of=job
        )
    if not job.spec:
        raise JobConflict(
            "not_rerunnable",
            "This workflow was submitted before Tide recorded workflows for re-runs; "
            "submit it again instead.",
        )
    workflow = Workflow.from_dict({**job.spec, "type": job.kind})
    return submit_workflow(
        kind=workflow.kind,
        steps=workflow.steps,
        callback=workflow.callback,
        options=options,
        owner=owner,
        idempotency=idempotency,
        rerun_of=job,
    )


#: What a cancelled job that never ran (or was stopped by the worker) says.
CANCELLED = "revoked by client"


def cancel_job(job: Job, *, terminate: bool = False) -> Job:
    """Cancel a job: the same request whatever its state; what it changes depends on it.

    - Waiting (queued, scheduled by eta/countdown, or between retries): it ends
      ``revoked`` now and never starts: every worker refuses it from its row, and the
      worker holding a scheduled message is told to let go of it (``release_revoked``).
    - Running: ``cancel_requested_at`` is set and the state is left to the worker. With
      ``terminate`` the worker stops the task (SIGTERM) and reports it ``revoked`` when it
      has stopped; without, the task runs to its end and reports as it ended.
    - Finished: nothing changes.

    A workflow is cancelled with its steps, nested workflows with theirs. A step cancels
    its workflow's rest as Celery would leave it: in a chain the later steps, in a chord
    the callback (a chord body never runs without all its header); a group's other
    members run on. Either way the workflow settles (a final state) once its running
    steps end, and the workflows around it follow. The link/link_error callbacks of a job
    revoked here will not run either and end revoked.
    """
    now = timezone.now()
    targets = [job.id]
    # The workflow to settle: the job's own, or the one it is a step of (a callback's
    # parent is its task, not a workflow).
    workflow_id = job.id if job.kind != JobKind.TASK else job.parent_id
    if job.trigger:
        workflow_id = None
    if job.parent_id is not None and not job.trigger:
        parent = Job.objects.only("kind").get(id=job.parent_id)
        siblings = parent.steps.filter(trigger="").exclude(id=job.id)
        if parent.kind == JobKind.CHAIN:
            targets += list(siblings.filter(position__gt=job.position).values_list("id", flat=True))
        elif parent.kind == JobKind.CHORD:
            last = (
                parent.steps.filter(trigger="")
                .order_by("-position")
                .values_list("id", flat=True)
                .first()
            )
            if last is not None and last != job.id:
                targets.append(last)
    levels = _step_levels(targets)
    every = [row_id for level in levels for row_id in level]
    with transaction.atomic():
        open_rows = Job.objects.filter(id__in=every).exclude(state__in=FINAL_STATES)
        open_rows.filter(cancel_requested_at__isnull=True).update(cancel_requested_at=now)
        # Not running: final now. The state filter makes this race-free against a
        # worker's mark_started (one conditional UPDATE or the other wins the row).
        waiting = [JobState.PENDING, JobState.RETRYING]
        revoked = list(
            open_rows.filter(kind=JobKind.TASK, state__in=waiting).values_list("id", flat=True)
        )
        Job.objects.filter(id__in=revoked, state__in=waiting).update(
            state=JobState.REVOKED, finished_at=now, error=CANCELLED
        )
        # A task revoked here never ends through the worker's hooks: settle its callbacks.
        Job.objects.filter(parent_id__in=revoked, parent__state=JobState.REVOKED).exclude(
            trigger=""
        ).exclude(state__in=FINAL_STATES).update(
            state=JobState.REVOKED, finished_at=now, error="not run: the task revoked"
        )
    ids = [str(i) for i in every]
    try:
        # Celery's revoke flags the ids on every worker (and stops running ones with
        # terminate); release_revoked makes a worker holding one of them until its eta
        # acknowledge it now, so its slot and the exporter's scheduled count free up.
        app.control.revoke(ids, terminate=terminate)
        app.control.broadcast("release_revoked", arguments={"task_ids": ids})
    except (KombuOperationalError, OSError) as exc:
        logger.warning("revoke broadcast for %s failed: %s", job.id, exc)
    # Nested workflows settle innermost first; then the workflow of the job, and the
    # workflows around it.
    for level in reversed(levels[1:] if job.kind == JobKind.TASK else levels):
        nested = Job.objects.filter(id__in=level).exclude(kind=JobKind.TASK)
        for row_id in nested.values_list("id", flat=True):
            if row_id != workflow_id:
                refresh_workflow(row_id, upward=False)
    if workflow_id is not None:
        refresh_workflow(workflow_id)
    job.refresh_from_db()
    return job


def _step_levels(ids: Sequence[Any]) -> list[list[Any]]:
    """``ids``, then their steps, then those steps' steps...: callbacks left out."""
    levels = [list(ids)]
    while levels[-1]:  # one query per level: MAX_DEPTH at most
        levels.append(
            list(
                Job.objects.filter(parent_id__in=levels[-1], trigger="").values_list(
                    "id", flat=True
                )
            )
        )
    return levels[:-1]


def _with_descendants(ids: Sequence[Any]) -> list[Any]:
    """The jobs ``ids`` and every row below them: steps, nested steps, callbacks."""
    found, level = list(ids), list(ids)
    while level:  # one query per level: MAX_DEPTH and a callback level at most
        level = list(Job.objects.filter(parent_id__in=level).values_list("id", flat=True))
        found.extend(level)
    return found


# --- Worker-side updates ------------------------------------------------------------


def _not_final(task_id: str) -> Any:
    return Job.objects.filter(id=task_id).exclude(state__in=FINAL_STATES)


@dataclass(frozen=True)
class PeriodicRun:
    """What the worker knows of a run beat published: the periodic task and the call."""

    periodic_task: str
    task: str
    args: Sequence[Any]
    kwargs: dict[str, Any]
    queue: str


def mark_started(
    task_id: str,
    *,
    worker: str,
    retries: int,
    workflow: str | None,
    periodic: PeriodicRun | None = None,
) -> bool:
    """Mark a job started; False when it must not run (cancelled or already finished)."""
    now = timezone.now()
    updated = _not_final(task_id).update(
        state=JobState.STARTED,
        worker=worker,
        attempts=F("attempts") + 1,
        retries=retries,
        started_at=Coalesce(F("started_at"), now),
        # When this run started (``update`` leaves auto_now alone): a redelivery notice
        # older than it is about an earlier run (``mark_redelivered``).
        updated_at=now,
    )
    if updated:
        if workflow:
            refresh_workflow(workflow)
        return True
    if Job.objects.filter(id=task_id).exists():
        return False
    if periodic is not None:
        # Beat publishes without the API, so a periodic run has no row yet: make it now,
        # owned by whoever made the periodic task, so its result shows like any job's.
        _record_periodic_run(task_id, periodic, worker=worker, retries=retries, now=now)
    # No row at all: a task published outside the API (e.g. by user code); let it run.
    return True


def _record_periodic_run(
    task_id: str, run: PeriodicRun, *, worker: str, retries: int, now: datetime
) -> None:
    from tide.jobs.models import PeriodicTaskOwner

    owner_id = (
        PeriodicTaskOwner.objects.filter(periodic_task__name=run.periodic_task)
        .values_list("owner_id", flat=True)
        .first()
    )
    Job.objects.bulk_create(
        [
            Job(
                id=task_id,
                owner_id=owner_id,
                task_name=run.task,
                args=_jsonable(list(run.args)),
                kwargs=dict(run.kwargs),
                queue=run.queue,
                periodic_task=run.periodic_task,
                state=JobState.STARTED,
                worker=worker,
                attempts=1,
                retries=retries,
                started_at=now,
            )
        ],
        # A redelivered message may race its first delivery: one row either way.
        ignore_conflicts=True,
    )


def record_progress(task_id: str, *, percent: float, message: str = "") -> None:
    percent = max(0.0, min(100.0, float(percent)))
    message = message[:500]
    with transaction.atomic():
        if _not_final(task_id).update(
            state=JobState.PROGRESS, progress=percent, progress_message=message
        ):
            JobProgress.objects.create(job_id=task_id, percent=percent, message=message)


def mark_retrying(task_id: str, *, error: str) -> None:
    _not_final(task_id).update(state=JobState.RETRYING, error=error)


def redelivery_reason(worker: str) -> str:
    return f"redelivered: {worker} was lost while running it; it waits to run again"


def mark_redelivered(task_id: str, *, worker: str, at: datetime) -> bool:
    """Dead-worker recovery put the job's message back at ``at``: the run ``worker`` began
    is over, the job waits in its queue to run again (``retrying``).

    Only a job still shown running on that worker, by a run that started before ``at``, is
    changed: a run that began since (the message already taken again, even by a worker
    of the same name) is the live one. A job not yet started (a prefetched message) stays
    ``pending``; a finished one stays finished.
    """
    return bool(
        _not_final(task_id)
        .filter(
            state__in=(JobState.STARTED, JobState.PROGRESS),
            worker=worker,
            updated_at__lte=at,
        )
        .update(state=JobState.RETRYING, error=redelivery_reason(worker))
    )


def mark_succeeded(
    task_id: str, *, result: Any, workflow: str | None = None, callbacks: bool | None = None
) -> None:
    # A job that reported progress ends at 100%; one that never did keeps none.
    progress = Case(When(progress__isnull=False, then=Value(100.0)), default=None)
    _finish(
        task_id,
        workflow=workflow,
        callbacks=callbacks,
        state=JobState.SUCCEEDED,
        result=_jsonable(result),
        error="",
        progress=progress,
    )


def mark_failed(
    task_id: str, *, error: str, workflow: str | None = None, callbacks: bool | None = None
) -> None:
    _finish(task_id, workflow=workflow, callbacks=callbacks, state=JobState.FAILED, error=error)


def mark_revoked(task_id: str, *, reason: str, workflow: str | None = None) -> None:
    _finish(task_id, workflow=workflow, callbacks=None, state=JobState.REVOKED, error=reason)


# The callbacks a task's end leaves unfired, by the state it ended in.
_UNFIRED = {
    JobState.SUCCEEDED: [JobTrigger.LINK_ERROR],
    JobState.FAILED: [JobTrigger.LINK],
    JobState.REVOKED: [JobTrigger.LINK, JobTrigger.LINK_ERROR],
}


def _finish(
    task_id: str, *, workflow: str | None, callbacks: bool | None, state: str, **values: Any
) -> None:
    now = timezone.now()
    updated = _not_final(task_id).update(state=state, finished_at=now, **values)
    if not updated:
        return
    if callbacks is not False:
        # Celery publishes a task's link callbacks when it succeeds and its link_error
        # ones when it fails; the others will never run and are settled here. The
        # worker's hooks say (a message header) whether there are any; None: look.
        _not_final_callbacks = Job.objects.filter(
            parent_id=task_id, trigger__in=_UNFIRED[state]
        ).exclude(state__in=FINAL_STATES)
        _not_final_callbacks.update(
            state=JobState.REVOKED, finished_at=now, error=f"not run: the task {state}"
        )
    if workflow is None:
        # Unknown (a revocation arrives without the message's headers): look it up. The
        # worker-side hooks pass "" for a task that is not a workflow step; a callback's
        # parent is its task, not a workflow.
        workflow = (
            Job.objects.filter(id=task_id, trigger="").values_list("parent_id", flat=True).first()
        )
    if workflow:
        refresh_workflow(workflow)


def _jsonable(value: Any) -> Any:
    # Celery already serialised the result as JSON to store it; values that reach here
    # are JSON types. Sets and tuples from user code become lists.
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return value


def refresh_workflow(parent_id: Any, *, upward: bool = True) -> None:
    """Derive a workflow's state, progress and result from its steps, then its parent
    workflow's (nested workflows are steps of the one around them).

    The row is locked so steps finishing at once on different workers apply their
    updates one after another, each seeing the others'. Locks are taken from a step up
    to the top, each in its own transaction, so two paths never wait on each other.
    """
    with transaction.atomic():
        parent = Job.objects.select_for_update().get(id=parent_id)
        steps = _steps_of(parent)
        now = timezone.now()
        stopped = [s for s in steps if s.state in (JobState.FAILED, JobState.REVOKED)]
        if stopped and parent.kind in (JobKind.CHAIN, JobKind.CHORD):
            # A failed or revoked chain step stops the chain, a failed or revoked chord
            # header stops the body, as in Celery: mark the steps that will now never run,
            # with everything nested in them, so the workflow can finish.
            first = stopped[0]
            doomed = [
                s.id
                for s in steps
                if s.state not in FINAL_STATES
                and (
                    s.position > first.position if parent.kind == JobKind.CHAIN else s is steps[-1]
                )
            ]
            if doomed:
                Job.objects.filter(id__in=_with_descendants(doomed)).exclude(
                    state__in=FINAL_STATES
                ).update(
                    state=JobState.REVOKED,
                    finished_at=now,
                    error=f"skipped: step {first.position} {first.state}",
                )
                steps = _steps_of(parent)
        states = {s.state for s in steps}
        done = [s for s in steps if s.state in FINAL_STATES]
        parent.progress = round(100.0 * len(done) / len(steps), 2)
        if len(done) == len(steps):
            parent.finished_at = parent.finished_at or now
            if JobState.FAILED in states:
                parent.state = JobState.FAILED
                parent.error = next(s.error for s in steps if s.state == JobState.FAILED)
            elif JobState.REVOKED in states:
                parent.state = JobState.REVOKED
                parent.error = next(s.error for s in steps if s.state == JobState.REVOKED)
            else:
                parent.state = JobState.SUCCEEDED
                parent.result = (
                    [s.result for s in steps] if parent.kind == JobKind.GROUP else steps[-1].result
                )
        elif states - {JobState.PENDING} and parent.state not in FINAL_STATES:
            parent.state = JobState.STARTED
            parent.started_at = parent.started_at or min(
                (s.started_at for s in steps if s.started_at), default=now
            )
        parent.save()
        outer = parent.parent_id
    if outer is not None and upward:
        refresh_workflow(outer)


def _steps_of(workflow: Job) -> list[Job]:
    return list(Job.objects.filter(parent=workflow, trigger="").order_by("position"))


# --- Housekeeping -------------------------------------------------------------------


def purge_expired(*, now: datetime | None = None) -> int:
    """Delete finished jobs older than the retention period; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.TIDE_JOB_RETENTION_SECONDS)
    deleted, _ = Job.objects.filter(
        parent__isnull=True, state__in=FINAL_STATES, finished_at__lt=cutoff
    ).delete()
    return deleted
