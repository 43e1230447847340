"""Fixtures of the end-to-end suite (defined in ``e2e_harness``, which the tests import)."""

from typing import Any

from e2e_harness import (
    broker,
    chart,
    cluster,
    exporter,
    namespace,
    operator,
    print_report,
    prometheus,
    report,
    standin_kubelet,
    workdir,
)

__all__ = [
    "broker",
    "chart",
    "cluster",
    "exporter",
    "namespace",
    "operator",
    "prometheus",
    "report",
    "standin_kubelet",
    "workdir",
]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    print_report(terminalreporter)
