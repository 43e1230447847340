"""Lint, format, types and the Dockerfile, as part of the suite so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [
        # Lint rules from pyproject.toml.
        [str(BIN / "ruff"), "check", "."],
        # One layout for all Python.
        [str(BIN / "ruff"), "format", "--check", "."],
        # The Dockerfile follows hadolint's rules.
        [str(BIN / "hadolint"), "Dockerfile"],
        # Types: strict on tide_operator, checked on the app.
        [str(BIN / "mypy")],
        # The layers of both packages (.importlinter).
        [str(BIN / "lint-imports")],
    ],
    ids=["ruff", "ruff-format", "hadolint", "mypy", "import-linter"],
)
def test_tool_is_clean(argv: list[str]) -> None:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


@pytest.mark.parametrize("script", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_script_compiles(script: Path) -> None:
    # Benchmarks run outside the suite; at least they must stay valid Python.
    result = subprocess.run(
        [sys.executable, "-m", "py_compile", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
