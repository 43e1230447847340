"""The live terminal view of ``tide up`` (rich): services, then one row per pool."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tide.local.autoscaler import PoolAutoscaler


def _age(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}s"


def render(
    *, services: Mapping[str, str], autoscalers: Sequence[PoolAutoscaler], notes: Sequence[str]
) -> Group:
    header = Table.grid(padding=(0, 2))
    for name, url in services.items():
        header.add_row(Text(name, style="bold"), url)
    for note in notes:
        header.add_row("", Text(note, style="dim"))

    pools = Table(expand=True, title="worker pools", title_style="bold")
    for column, justify in (
        ("pool", "left"),
        ("queues", "left"),
        ("waiting", "right"),
        ("in flight", "right"),
        ("scheduled", "right"),
        ("oldest", "right"),
        ("desired", "right"),
        ("running", "right"),
        ("stopping", "right"),
        ("last decision", "left"),
    ):
        pools.add_column(column, justify=justify)  # type: ignore[arg-type]
    for scaler in autoscalers:
        status, obs = scaler.status, scaler.status.observation
        reason = Text(status.reason)
        # Conditions that are False (Ready, SafeScaleIn) stay on screen until they clear.
        for condition in (status.resource_status or {}).get("conditions", []):
            if condition["type"] in ("Ready", "SafeScaleIn") and condition["status"] == "False":
                reason.append(f"\n{condition['reason']}: {condition['message']}", style="yellow")
        if status.error:
            reason = Text(f"metrics unavailable: {status.error}", style="yellow")
        # Tasks the pool's app does not register, waiting in its queues (refused or not).
        if scaler.workers.warning:
            reason.append(f"\n{scaler.workers.warning}", style="bold red")
        pools.add_row(
            scaler.pool.name,
            ",".join(scaler.pool.queues),
            str(obs.waiting) if obs else "—",
            str(obs.inflight) if obs else "—",
            str(obs.scheduled) if obs else "—",
            _age(obs.oldest_age) if obs else "—",
            str(status.desired),
            str(len(scaler.workers.running)),
            str(len(scaler.workers.stopping)),
            reason,
        )
    return Group(Panel(header, title="tide up", subtitle="Ctrl-C drains; twice forces"), pools)
