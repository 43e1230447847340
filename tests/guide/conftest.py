"""The "Bring your own app" guide, held by its own code blocks (see ``guide_blocks``)."""

from crd_admission import admit, crd_schema

__all__ = ["admit", "crd_schema"]
