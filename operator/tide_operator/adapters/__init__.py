"""Adapters: metric sources (Prometheus, the exporter), scale targets (a Deployment, local
processes) and the Kubernetes API client they use. The I/O lives here, behind the small
interfaces the reconcile step calls.
"""
