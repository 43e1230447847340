"""Fixtures for the operator tests (defined in ``pool_harness``, which the tests import).

Two hooks serve ``test_operator_rbac``, which compares what the operator asked the API for
across this folder's tests with what the chart grants: it runs last, and it learns whether
the whole folder was selected (only then can a grant that nobody used be called unused).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pool_harness import USAGE, api, cluster_operator, emulator, exporter, operator, probe
from stockapp_harness import StockBroker, Workers, redis_broker

from tide_operator.adapters.targets import CeleryInspectProbe
from tide_operator.edge.handlers import busy_probe_from_env

__all__ = ["api", "cluster_operator", "emulator", "exporter", "operator", "probe"]

HERE = Path(__file__).resolve().parent


# Real workers of the stock app (tests of the busy probe, consolidation and recovery).
@pytest.fixture
def broker() -> Iterator[StockBroker]:
    """A Redis corner of the stock app's own (keyspace and queues), removed afterwards."""
    corner = redis_broker()
    yield corner
    corner.cleanup()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(folder=tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def real_probe(broker: StockBroker) -> Iterator[CeleryInspectProbe]:
    # Built as the operator's pod builds it: the broker and the app's transport options.
    probe = busy_probe_from_env(
        {
            "CELERY_BROKER_URL": broker.url,
            "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
        }
    )
    assert probe is not None
    yield probe
    probe.close()


RBAC_TEST = "test_operator_rbac.py"


def _here(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().parent == HERE


def pytest_itemcollected(item: pytest.Item) -> None:
    if _here(item):
        USAGE.collected.add(item.nodeid)
        USAGE.collected_files.add(Path(str(item.path)).name)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    USAGE.selected = {item.nodeid for item in items if _here(item)}
    last = [item for item in items if _here(item) and Path(str(item.path)).name == RBAC_TEST]
    items[:] = [item for item in items if item not in last] + last
