"""Fixtures for the metric-source tests (defined in ``prometheus_harness``)."""

from prometheus_harness import exposition, prometheus, silent_server

__all__ = ["exposition", "prometheus", "silent_server"]
