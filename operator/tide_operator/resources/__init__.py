"""The resource model: the WorkerPool as typed models, its CRD, the Deployment it owns,
and its status, all as pure functions of their inputs.

These modules know the shape of Kubernetes objects but never talk to an API server; the
reconcile step and the adapters use them to decide and to write.
"""
