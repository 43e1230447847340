"""``tide operator``: run the WorkerPool operator (kopf in standalone mode, one acting replica).

The command wires the pieces and runs kopf in-process (no ``kopf run`` of a file): the
handlers from ``handlers.build_registry``, the settings from ``handlers.make_settings``
(watch timeouts, so a silently dropped watch reconnects instead of going deaf), a liveness
endpoint for the pod's probe, and the operator's own metrics on ``:9091/metrics``.

It watches either the namespaces given with ``--namespace`` (repeatable; RBAC can then be
a Role per namespace) or the whole cluster with ``--all-namespaces``. Standalone means no
kopf peering objects: replicas elect the one that acts with a ``coordination.k8s.io`` Lease
(``tide-operator`` in the operator's namespace, ``adapters/leases.py``); the others keep
their pools' policy state warm and take over within a lease duration if it dies. The
replica's identity is ``POD_ID`` (the chart sets the pod's name), else the hostname.
"""

from __future__ import annotations

import logging
import os
import socket

import click

from tide_operator.adapters.leases import LEASE_DURATION, LEASE_RENEW

__all__ = ["operator_command"]


@click.command("operator")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    envvar="TIDE_OPERATOR_NAMESPACES",
    help="Watch this namespace (repeatable; env TIDE_OPERATOR_NAMESPACES, space-separated).",
)
@click.option(
    "-A",
    "--all-namespaces",
    is_flag=True,
    envvar="TIDE_OPERATOR_ALL_NAMESPACES",
    help="Watch WorkerPools in every namespace (needs a ClusterRole).",
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="kopf's liveness endpoint for the pod's probe.",
)
@click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    help="kubeconfig to log in with (env KUBECONFIG); default: the pod's service account, "
    "else ~/.kube/config.",
)
@click.option("--context", help="kubeconfig context (default: its current-context).")
@click.option("--metrics-port", type=int, default=9091, show_default=True)
@click.option("--metrics-addr", default="0.0.0.0", show_default=True)
@click.option(
    "--lease-namespace",
    envvar="TIDE_OPERATOR_LEASE_NAMESPACE",
    help="Namespace of the Lease tide-operator that elects the acting replica (default: "
    "POD_NAMESPACE, else the first namespace watched).",
)
@click.option(
    "--lease-duration",
    type=click.IntRange(min=2),
    default=LEASE_DURATION,
    show_default=True,
    envvar="TIDE_OPERATOR_LEASE_DURATION",
    help="Seconds a Lease not renewed stays with its holder before a standby takes it over.",
)
@click.option(
    "--lease-renew",
    type=click.FloatRange(min=0.1),
    default=LEASE_RENEW,
    show_default=True,
    envvar="TIDE_OPERATOR_LEASE_RENEW",
    help="Seconds between renewals of the Lease (and between a standby's reads of it).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every handler run.")
@click.option("--debug", is_flag=True, help="Log the API traffic too.")
def operator_command(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    liveness: str,
    kubeconfig: str | None,
    context: str | None,
    metrics_port: int,
    metrics_addr: str,
    lease_namespace: str | None,
    lease_duration: int,
    lease_renew: float,
    verbose: bool,
    debug: bool,
) -> None:
    """Run the WorkerPool operator: scale Celery worker Deployments from queue metrics."""
    import kopf

    from tide_operator.adapters.credentials import LoginFailed, login
    from tide_operator.adapters.leases import LeaseSettings
    from tide_operator.adapters.targets import SharedReports
    from tide_operator.edge.handlers import (
        Runtime,
        build_registry,
        busy_probe_from_env,
        recoveries_from_env,
    )
    from tide_operator.edge.metrics import OperatorMetrics, serve

    if all_namespaces and namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    if not all_namespaces and not namespaces:
        # In a pod, default to the operator's own namespace (the chart sets POD_NAMESPACE).
        own = os.environ.get("POD_NAMESPACE")
        if not own:
            raise click.UsageError("give --namespace NAME (repeatable) or --all-namespaces")
        namespaces = (own,)
    # kopf names the operator from POD_ID, else from getpass.getuser(), which raises
    # KeyError for a uid without a passwd entry: the image runs as 10001 with none, as in
    # a pod. The hostname is the pod's name in Kubernetes and the machine's elsewhere.
    os.environ.setdefault("POD_ID", socket.gethostname())
    watched = [n for item in namespaces for n in item.split()]
    lease_home = lease_namespace or os.environ.get("POD_NAMESPACE") or next(iter(watched), None)
    if not lease_home:
        raise click.UsageError(
            "with --all-namespaces, say where the operator's Lease lives: POD_NAMESPACE "
            "(the chart sets it) or --lease-namespace NAME"
        )
    try:
        lease = LeaseSettings(
            namespace=lease_home,
            identity=os.environ["POD_ID"],
            duration=lease_duration,
            renew_every=lease_renew,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    kopf.configure(verbose=verbose, debug=debug)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # No credentials is the start-up failure everyone meets (a pod without its token, a
    # shell without a kubeconfig): one line saying what was tried, before anything starts.
    # Inside kopf it would be a traceback per task. The runtime then uses this login.
    try:
        credentials = login(kubeconfig=kubeconfig, context=context)
    except LoginFailed as error:
        raise click.ClickException(str(error)) from error
    metrics = OperatorMetrics(process=True)
    serve(metrics, port=metrics_port, addr=metrics_addr)
    # One Celery probe asks the workers both what they hold and what they run; what they
    # run is asked for every pool of a moment at once (SharedReports).
    probe = busy_probe_from_env()
    runtime = Runtime(
        metrics=metrics,
        login=lambda: credentials,
        busy_probe=probe,
        worker_probe=SharedReports(probe) if probe is not None else None,
        lease=lease,
    )
    runtime.recoveries = recoveries_from_env(runtime)
    kopf.run(
        registry=build_registry(runtime),
        settings=runtime.settings,
        standalone=True,
        clusterwide=all_namespaces,
        namespaces=watched,
        liveness_endpoint=liveness,
    )
