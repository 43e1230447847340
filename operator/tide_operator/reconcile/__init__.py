"""The reconcile step: one read-decide-apply-report pass for one pool.

Shared by the operator's per-pool loop and by local mode; it knows metric sources and
scale targets only through their small interfaces, and nothing of kopf.
"""
