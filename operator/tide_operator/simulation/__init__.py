"""Offline tools: the discrete-event simulator, workload traces, the KEDA/HPA baselines,
the figures of merit and the ``tide simulate`` command. They use the same policy as the
operator and never touch a cluster.
"""
