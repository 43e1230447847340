"""The ``tide`` command group: every command resolves, and starting a role imports only
what that role needs (each pod start and each worker scaled up pays for the rest)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tide.cli import main

COMMANDS = main.list_commands(click.Context(main))


def test_every_role_of_the_image_is_a_command() -> None:
    roles = {"api", "worker", "beat", "flower", "exporter", "operator", "migrate"}
    assert roles <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_resolves_and_explains_itself(name: str) -> None:
    # A command imported lazily is only checked when asked for: ask for each one.
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_importing_the_group_loads_no_other_package() -> None:
    # In a fresh interpreter: the exporter, the operator (kopf), local mode and the
    # simulator (numpy) load only when their command runs.
    probe = (
        "import sys, tide.cli; "
        "print(','.join(m for m in ('numpy', 'kopf', 'tide.exporter.cli', 'tide.local.cli', "
        "'tide_operator.simulation.cli') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
