"""Fixtures for the metric-source tests (defined in ``prometheus_harness``)."""

from prometheus_harness import exposition, other_exporter, prometheus, silent_server

__all__ = ["exposition", "other_exporter", "prometheus", "silent_server"]
