"""Reconcile-step tests: the step between a source, the policy and a target (no cluster)."""
