"""Simulator tests: small shared settings."""

from __future__ import annotations

import pytest

from tide_operator.simulation.simulator import SimSettings


@pytest.fixture
def sim_settings() -> SimSettings:
    return SimSettings(concurrency=4, startup_delay=20.0, max_wait=60.0, max_replicas=50)
