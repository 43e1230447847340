"""Fixtures for the operator tests (defined in ``pool_harness``, which the tests import).

Two hooks serve ``test_operator_rbac``, which compares what the operator asked the API for
across this folder's tests with what the chart grants: it runs last, and it learns whether
the whole folder was selected (only then can a grant that nobody used be called unused).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pool_harness import USAGE, api, cluster_operator, emulator, exporter, operator, probe

__all__ = ["api", "cluster_operator", "emulator", "exporter", "operator", "probe"]

HERE = Path(__file__).resolve().parent
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
