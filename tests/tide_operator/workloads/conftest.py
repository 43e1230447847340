"""Tests of the watches' view of Deployments and pods (``adapters/workloads.py``)."""
