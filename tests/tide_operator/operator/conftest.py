"""Fixtures for the operator tests (defined in ``pool_harness``, which the tests import)."""

from pool_harness import api, cluster_operator, emulator, exporter, operator, probe

__all__ = ["api", "cluster_operator", "emulator", "exporter", "operator", "probe"]
