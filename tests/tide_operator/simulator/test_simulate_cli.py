"""``tide simulate`` without its plotting extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tide_operator.simulation.cli import simulate


def test_plots_without_matplotlib_name_the_extra_before_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # matplotlib is the `plots` extra, absent from Tide's image.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(simulate, ["--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "tide-platform[plots]" in result.output
    assert "--no-plot" in result.output
    assert list(tmp_path.iterdir()) == []


def test_no_plot_runs_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(
        simulate, ["--out", str(tmp_path), "--no-plot", "--trace", "spike", "--policy", "tide"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.json").exists()
    assert not list(tmp_path.glob("*.png"))
