"""The "Bring your own app" guide, held by its own code blocks (see ``guide_blocks``).

The CRD admission fixtures come from the CRD tests, and ``helm template`` from the chart's
(both folders are on pytest's ``pythonpath``).
"""

from crd_admission import admit, crd_schema

__all__ = ["admit", "crd_schema"]
