"""Every value is documented, and the README's values table is generated from values.yaml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from chart_render import CHART, REPO

GENERATOR = REPO / "scripts" / "chart-readme.py"


def generator():
    spec = importlib.util.spec_from_file_location("chart_readme", GENERATOR)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_value_is_documented() -> None:
    assert generator().undocumented((CHART / "values.yaml").read_text()) == []


def test_readme_table_is_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
