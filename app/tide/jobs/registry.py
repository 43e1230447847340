"""The task registry: which Celery tasks clients may submit, and how their arguments
are checked before anything is written or published.

A task joins the registry by being declared with ``@job_task`` (a ``shared_task`` whose
base is ``JobTask``); Celery's own tasks and internal ones are never submittable. Argument
checking binds the client's args/kwargs to the task function's signature and validates
them against its type hints with pydantic, so ``{"n": "ten"}`` is a 400 at the door rather
than a TypeError in a worker an hour later. The check is strict (pydantic's strict mode on
the JSON the client sent): the task receives the arguments as sent, so they must already
be of the declared types; ``add("1", "2")`` is refused rather than passed as strings a
lenient check would have read as numbers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, cast

import pydantic
from celery import Task, shared_task

from tide.celery import app

F = TypeVar("F", bound=Callable[..., Any])


class ArgumentsError(ValueError):
    """The arguments do not fit the task's signature; ``errors`` says how, per field."""

    def __init__(self, task_name: str, errors: list[dict[str, Any]]) -> None:
        self.task_name = task_name
        self.errors = errors
        super().__init__(f"invalid arguments for {task_name}")


def job_task(*decorator_args: Any, **options: Any) -> Any:
    """Declare a task clients may submit through the API (``@job_task(name=…)``).

    The base class ``JobTask`` keeps the task's job row current (started, progress,
    retrying, succeeded, failed) from inside the worker.
    """
    from tide.jobs.tracking import JobTask

    options.setdefault("base", JobTask)
    options.setdefault("bind", True)
    return shared_task(*decorator_args, **options)


SAMPLES = "tide.samples."


def _submittable(task: Task | None) -> bool:
    from django.conf import settings

    from tide.jobs.tracking import JobTask

    if not isinstance(task, JobTask) or getattr(task, "internal", False):
        return False
    # The sample tasks only where the platform opts in (TIDE_SAMPLE_TASKS).
    return settings.TIDE_SAMPLE_TASKS or not task.name.startswith(SAMPLES)


def registered_tasks() -> dict[str, Task]:
    """Submittable tasks by name, in name order."""
    return {name: task for name, task in sorted(app.tasks.items()) if _submittable(task)}


def get_task(name: str) -> Task | None:
    """The submittable task called ``name``: one lookup, on every submission's path."""
    task = app.tasks.get(name)
    return task if _submittable(task) else None


def default_queue(task_name: str) -> str:
    """The queue Celery's routes send ``task_name`` to (the default queue without a route)."""
    queue = app.amqp.router.route({}, task_name).get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


@cache
def _signature(task_name: str) -> inspect.Signature:
    task = app.tasks[task_name]
    signature = inspect.signature(task.run, eval_str=True)
    params = list(signature.parameters.values())
    # Bound tasks take ``self`` first; the client never passes it.
    if getattr(task, "bind", False) and params and params[0].name == "self":
        params = params[1:]
    return signature.replace(parameters=params)


@cache
def _adapter(task_name: str, skipped: frozenset[str] = frozenset()) -> pydantic.TypeAdapter[Any]:
    fields: dict[str, Any] = {}
    for param in _signature(task_name).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in skipped:
            continue
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = pydantic.create_model(
        f"{task_name}:arguments",
        __config__=pydantic.ConfigDict(strict=True, extra="allow"),
        **fields,
    )
    return pydantic.TypeAdapter(model)


def check_arguments(
    task_name: str, args: list[Any], kwargs: dict[str, Any], *, placeholder: object = None
) -> None:
    """Raise ``ArgumentsError`` unless args/kwargs bind to the task and fit its types.

    An argument equal to ``placeholder`` (a value only known at run time, such as the
    previous result in a chain) must bind but is not type-checked.
    """
    signature = _signature(task_name)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentsError(task_name, [{"loc": [], "msg": str(exc)}]) from None
    values = {
        name: value
        for name, value in bound.arguments.items()
        if placeholder is None or value is not placeholder
    }
    skipped = {name for name in bound.arguments if name not in values}
    try:
        # JSON mode: strict about types yet reading dates and times from their ISO text,
        # the only way JSON carries them (and how the worker receives them).
        _adapter(task_name, frozenset(skipped)).validate_json(json.dumps(values))
    except pydantic.ValidationError as exc:
        errors = [
            {"loc": list(error["loc"]), "msg": error["msg"]}
            for error in exc.errors(include_url=False)
        ]
        raise ArgumentsError(task_name, errors) from None


def describe(task_name: str) -> dict[str, Any]:
    """A task's public description: name, docstring, parameters and its queue."""
    task = app.tasks[task_name]
    return {
        "name": task_name,
        "description": inspect.getdoc(task.run) or "",
        "parameters": [
            {
                "name": p.name,
                "required": p.default is p.empty,
                "type": None if p.annotation is p.empty else _type_name(p.annotation),
            }
            for p in _signature(task_name).parameters.values()
        ],
        "queue": default_queue(task_name),
    }


def _type_name(annotation: Any) -> str:
    return cast(str, getattr(annotation, "__name__", None) or str(annotation))
