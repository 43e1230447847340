"""Worker pools for local mode, read from WorkerPool YAML: the same resource the operator
reads in a cluster, validated by the same model
(``tide_operator.resources.spec.WorkerPoolSpec``), so a pool tried locally is the pool
deployed.

Local mode honours the queues, the concurrency, the prefetch multiplier, the shutdown grace
and every scaling field (mapped to the policy by ``to_policy_config``, as the operator maps
them). From the pod template it takes what says which program the workers are: ``app``
(``celery -A <app> worker``), or ``command`` and ``args`` run as they are written (with
Tide's flags after them, as on the cluster); without them, the app ``tide up --app`` names,
else Tide's. The image, the rest of the pod and the metric source are cluster matters:
locally the workers are processes and the metrics come from the local exporter, so a pool
written for local mode may leave ``metrics`` and the template's ``image`` out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tide_operator.core.policy import PolicyConfig
from tide_operator.resources.spec import WorkerPoolSpec

EXAMPLE_POOL = """\
apiVersion: tide.dev/v1alpha1
kind: WorkerPool
metadata:
  name: default
spec:
  queues: [default, cpu, io, priority]
  concurrency: 2
  minReplicas: 0
  maxReplicas: 4
  maxWaitSeconds: 30
  cooldownPeriod: 30
  pollingInterval: 2
  template:
    image: tide:latest
  metrics:
    exporter:
      url: http://127.0.0.1:9808/metrics
  shutdown:
    gracePeriodSeconds: 300
"""


# Where local mode's own exporter answers; the autoscaler reads it whatever a pool says.
LOCAL_METRICS_URL = "http://127.0.0.1:9808/metrics"
# The image a pool written for local mode leaves out (the cluster requires a real one).
LOCAL_IMAGE = "local"


class PoolFileError(ValueError):
    """The pool file is unreadable or a pool in it is invalid; the message says which."""


@dataclass(frozen=True)
class LocalPool:
    name: str
    spec: WorkerPoolSpec

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self.spec.queues)

    @property
    def concurrency(self) -> int:
        return self.spec.concurrency

    @property
    def grace_seconds(self) -> float:
        return float(self.spec.shutdown.grace_period_seconds)

    @property
    def policy(self) -> PolicyConfig:
        return self.spec.to_policy_config()

    def worker_program(self, default_app: str) -> tuple[list[str], str]:
        """(the worker's command line up to and including ``worker``, the app it runs).

        The template's ``command`` + ``args`` as written, else ``celery -A <app> worker``
        with the template's ``app`` or ``default_app``. The app is what the pool's tasks are
        checked against: the template's ``app``, else the ``-A`` its command line gives,
        else ``default_app``.
        """
        template = self.spec.template
        argv = [*template.command, *template.args] if template is not None else []
        named = template.app if template is not None else None
        if argv:
            return argv, named or _app_in(argv) or default_app
        app = named or default_app
        return ["celery", "-A", app, "worker"], app


def _app_in(argv: list[str]) -> str | None:
    """The ``-A``/``--app`` a celery command line names, if any."""
    for index, word in enumerate(argv):
        if word in ("-A", "--app") and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith("--app="):
            return word.split("=", 1)[1]
    return None


def _pool(document: dict[str, Any], *, source: str) -> LocalPool:
    if document.get("kind") != "WorkerPool":
        raise PoolFileError(f"{source}: kind is {document.get('kind')!r}, not WorkerPool")
    name = str((document.get("metadata") or {}).get("name") or "")
    if not name:
        raise PoolFileError(f"{source}: a WorkerPool needs metadata.name")
    spec = dict(document.get("spec") or {})
    # Locally the metrics come from the local exporter whatever the file says, so a pool
    # written for local mode may leave ``metrics`` out (the cluster still requires it).
    spec.setdefault("metrics", {"exporter": {"url": LOCAL_METRICS_URL}})
    # Nor the template's image: the workers are processes of this machine's Python. (A
    # template or a scaleTargetRef is still required, as in the cluster.)
    if isinstance(spec.get("template"), dict):
        spec["template"] = {"image": LOCAL_IMAGE, **spec["template"]}
    try:
        validated = WorkerPoolSpec.model_validate(spec)
    except ValidationError as exc:
        raise PoolFileError(f"{source}: WorkerPool {name!r} is invalid:\n{explain(exc)}") from None
    return LocalPool(name=name, spec=validated)


def explain(exc: ValidationError) -> str:
    """One line per problem, named by its path in the file (``spec.maxReplicas``), in
    words a person acts on, instead of pydantic's report."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(["spec", *(str(part) for part in error["loc"])])
        kind, message = error["type"], str(error["msg"])
        if kind == "missing":
            message = "required, but missing"
        elif kind == "extra_forbidden":
            message = "not a WorkerPool field (misspelt?)"
        else:
            message = message.removeprefix("Value error, ")
            value = error.get("input")
            if not isinstance(value, dict | list) and value is not None:
                message += f" (the file says {value!r})"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def load_pools(path: Path | None) -> list[LocalPool]:
    """Pools from a (multi-document) YAML file, or the example pool without one."""
    text = EXAMPLE_POOL if path is None else path.read_text()
    source = "example pool" if path is None else str(path)
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise PoolFileError(f"{source}: not YAML: {exc}") from None
    pools = [_pool(d, source=source) for d in documents]
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise PoolFileError(f"{source}: pool names repeat: {names}")
    if not pools:
        raise PoolFileError(f"{source}: no WorkerPool in the file")
    return pools
