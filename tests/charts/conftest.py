"""Fixtures for the chart's tests: each scenario of charts/tide/ci rendered once per session.

The helpers live in ``chart_render`` (a plain module, so test modules can import them).
"""

from __future__ import annotations

import pytest
from chart_render import Render, render_all


@pytest.fixture(scope="session")
def rendered() -> dict[str, Render]:
    return render_all()
