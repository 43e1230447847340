"""Fixtures for the CRD tests (defined in ``crd_admission``)."""

from crd_admission import admit, crd_schema

__all__ = ["admit", "crd_schema"]
