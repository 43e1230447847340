"""The integration package on its own: what importing and installing it does, its options,
and what it asks of an app's environment.

Its behaviour with real workers (running counts, completions, names, staleness) is tested
through the stock app in ``tests/stockapp``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import tide_celery
from tide_celery.layout import (
    TransportOptionsError,
    parse_transport_option,
    transport_options_from_env,
)

STOCKAPP = Path(__file__).resolve().parents[1] / "stockapp"
SIGNALS = (
    "before_task_publish",
    "task_prerun",
    "task_postrun",
    "task_received",
    "celeryd_init",
    "worker_init",
    "worker_shutdown",
)


def python(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (nothing of the suite loaded); it prints JSON."""
    environment = {**os.environ, "PYTHONPATH": str(STOCKAPP), **env}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_connects_nothing_and_creates_no_app() -> None:
    result = python(
        f"""
import json
from celery import signals, current_app
names = {SIGNALS!r}
before = {{n: len(getattr(signals, n).receivers) for n in names}}
import tide_celery, tide_celery.integration, tide_celery.layout, tide_celery.workers
after = {{n: len(getattr(signals, n).receivers) for n in names}}
from celery import _state
print(json.dumps({{"same": before == after, "apps": len(list(_state._get_active_apps())),
                   "current": current_app.main}}))
"""
    )
    # No receiver connected, and no Celery app exists but Celery's own fallback.
    assert result == {"same": True, "apps": 0, "current": "default"}


def test_the_apps_shared_tasks_stay_its_own() -> None:
    # The stock app installs the integration in its celery module, as a team does.
    result = python(
        """
import json
import stockapp.tasks
import tide_celery
from celery import current_app
print(json.dumps({"current": current_app.main,
                  "task_app": stockapp.tasks.place_order.app.main,
                  "installed": tide_celery.integration_for(current_app) is not None}))
"""
    )
    assert result == {"current": "stockapp", "task_app": "stockapp", "installed": True}


def test_install_is_idempotent_and_checks_its_interval() -> None:
    app = Celery("idempotent", broker="memory://", set_as_current=False)
    first = tide_celery.install(app)
    assert tide_celery.install(app) is first
    assert tide_celery.integration_for(Celery("other", set_as_current=False)) is None
    with pytest.raises(ValueError, match="heartbeat_interval"):
        tide_celery.install(Celery("bad", set_as_current=False), heartbeat_interval=0)


def test_the_distribution_needs_celery_and_kombu_only() -> None:
    requires = importlib.metadata.requires("tide-celery") or []
    assert sorted(r.split(";")[0].split(">")[0].split("<")[0] for r in requires) == [
        "celery",
        "kombu",
    ]
    # The platform depends on it, under a name of its own (not the unrelated "tide").
    assert any(
        r.startswith("tide-celery") for r in importlib.metadata.requires("tide-platform") or []
    )


OPTION_ROWS = [
    # A string value stays a string (a key prefix ends with ":").
    pytest.param("global_keyprefix=myapp:", {"global_keyprefix": "myapp:"}, id="string"),
    # JSON values are read as JSON: lists and numbers.
    pytest.param("priority_steps=[0,5,9]", {"priority_steps": [0, 5, 9]}, id="json-list"),
    pytest.param("visibility_timeout=3600", {"visibility_timeout": 3600}, id="json-number"),
    # Only the first "=" splits: the value may hold more.
    pytest.param("sep==", {"sep": "="}, id="value-with-equals"),
]


@pytest.mark.parametrize(("text", "expected"), OPTION_ROWS)
def test_one_transport_option(text: str, expected: dict[str, Any]) -> None:
    assert parse_transport_option(text) == expected


@pytest.mark.parametrize("text", ["global_keyprefix", "=x", ""])
def test_a_malformed_option_says_what_to_write(text: str) -> None:
    with pytest.raises(TransportOptionsError, match="name=value"):
        parse_transport_option(text)


ENV_ROWS = [
    # Nothing given: the caller keeps its own configuration.
    pytest.param({}, (), None, id="nothing"),
    # An empty object means kombu's defaults.
    pytest.param({"TIDE_BROKER_TRANSPORT_OPTIONS": "{}"}, (), {}, id="defaults"),
    # Items given one by one override the environment's JSON.
    pytest.param(
        {"TIDE_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "a:", "sep": ":"}'},
        ("global_keyprefix=b:",),
        {"global_keyprefix": "b:", "sep": ":"},
        id="items-override",
    ),
    # Items alone.
    pytest.param({}, ("global_keyprefix=c:",), {"global_keyprefix": "c:"}, id="items-only"),
]


@pytest.mark.parametrize(("environ", "items", "expected"), ENV_ROWS)
def test_transport_options_from_the_environment(
    environ: dict[str, str], items: tuple[str, ...], expected: dict[str, Any] | None
) -> None:
    assert transport_options_from_env(items, environ=environ) == expected


@pytest.mark.parametrize("text", ["global_keyprefix=x", "[1, 2]", "{broken"])
def test_bad_environment_json_is_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(TransportOptionsError, match="TIDE_BROKER_TRANSPORT_OPTIONS"):
        transport_options_from_env(environ={"TIDE_BROKER_TRANSPORT_OPTIONS": text})


def test_the_exporter_refuses_a_malformed_option() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("tide")), "exporter",
         "--broker-transport-option", "global_keyprefix"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "name=value" in done.stderr
