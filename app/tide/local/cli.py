"""``tide up``: the whole platform on one machine, autoscaling real workers.

Chooses a database and broker (``environment``), applies migrations, makes sure an API
user and token exist, starts the API (gunicorn), the exporter, beat and Flower as child
processes, then runs the autoscaler for each WorkerPool in this process, with a live view.
Ctrl-C (or SIGTERM) drains: autoscaling stops, workers warm-shut down and finish their
tasks, then the services stop. A second Ctrl-C forces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from tide.local.environment import LocalEnvironment, choose
from tide.local.load import TOKEN_FILE
from tide.local.pools import LocalPool, PoolFileError, load_pools
from tide.local.processes import Supervisor

POLICIES = ("tide", "keda-default", "keda-tuned", "hpa-default")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@click.command()
@click.option(
    "--pools",
    "pools_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="WorkerPool YAML (the CRD's schema). Default: one example pool.",
)
@click.option("--port", type=int, default=8000, show_default=True, help="API port.")
@click.option("--exporter-port", type=int, default=9808, show_default=True)
@click.option("--flower-port", type=int, default=5555, show_default=True)
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--no-ui", is_flag=True, help="Log decisions as JSON lines instead of the view.")
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="tide",
    show_default=True,
    help="Who decides: Tide's policy, or a model of another autoscaler (for comparisons).",
)
@click.option("--user", default="tide", show_default=True, help="API user to make a token for.")
@click.option(
    "--embedded",
    is_flag=True,
    help="Use SQLite and a private Redis even where PostgreSQL and Redis are running.",
)
@click.option(
    "--var",
    "var_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="TIDE_VAR_DIR",
    help="Logs and local state (default ./var).",
)
def up(
    pools_file: Path | None,
    port: int,
    exporter_port: int,
    flower_port: int,
    no_flower: bool,
    no_ui: bool,
    policy: str,
    user: str,
    var_dir: Path | None,
    embedded: bool,
) -> None:
    """Run the platform locally and autoscale worker processes until Ctrl-C."""
    try:
        pools = load_pools(pools_file)
    except PoolFileError as exc:
        raise click.ClickException(str(exc)) from None
    var = (var_dir or Path.cwd() / "var").resolve()
    var.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        filename=None if no_ui else str(var / "tide-up.log"),
    )
    # One line per scrape would drown the decisions.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")
    local = choose(var, embedded=embedded)
    os.environ.update(local.env())
    try:
        _up(
            pools=pools,
            local=local,
            var=var,
            port=port,
            exporter_port=exporter_port,
            flower_port=None if no_flower else flower_port,
            no_ui=no_ui,
            policy=policy,
            user=user,
        )
    finally:
        local.close()


def _up(
    *,
    pools: list[LocalPool],
    local: LocalEnvironment,
    var: Path,
    port: int,
    exporter_port: int,
    flower_port: int | None,
    no_ui: bool,
    policy: str,
    user: str,
) -> None:
    import django

    django.setup()
    if not no_ui:
        # Django's LOGGING, applied by setup(), points the root logger at the console,
        # under the live view; with the view on, the log (decisions included) goes to
        # var/tide-up.log as asked above.
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
            filename=str(var / "tide-up.log"),
            force=True,
        )
    from django.core.management import call_command

    from tide.jobs.accounts import ensure_admin_login, ensure_token

    click.echo(f"database: {local.database_note}")
    click.echo(f"broker:   {local.broker_url} ({local.broker_note})")
    call_command("migrate", interactive=False, verbosity=0)
    token = ensure_token(user)
    # ``tide load`` (and the reader) find the token here.
    (var / TOKEN_FILE).write_text(token + "\n")
    (var / TOKEN_FILE).chmod(0o600)
    # The same user logs in to the admin (/admin/) with the password kept beside the token.
    ensure_admin_login(user, var / "admin-password")

    queues = sorted({q for pool in pools for q in pool.queues})
    supervisor = Supervisor(env=dict(os.environ))
    tide = _bin("tide")
    supervisor.start(
        "api",
        [tide, "api", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        log=str(var / "api.log"),
    )
    supervisor.start(
        "exporter",
        [
            tide,
            "exporter",
            "--host",
            "127.0.0.1",
            "--port",
            str(exporter_port),
            "--queues",
            ",".join(queues),
            "--interval",
            "1",
        ],
        log=str(var / "exporter.log"),
    )
    supervisor.start("beat", [tide, "beat"], log=str(var / "beat.log"))
    services = {
        "start": f"http://127.0.0.1:{port}/  (the API, its docs and the admin)",
        "API": f"http://127.0.0.1:{port}/api/  (Authorization: Token {token})",
        "docs": f"http://127.0.0.1:{port}/api/docs/  (Swagger UI; Redoc at /api/redoc/)",
        "admin": f"http://127.0.0.1:{port}/admin/  (user {user}, password in {var}/admin-password)",
        "metrics": f"http://127.0.0.1:{exporter_port}/metrics",
    }
    if flower_port:
        supervisor.start(
            "flower",
            # Scaled-in workers are gone for good: Flower drops them a minute after they
            # go offline instead of listing every one as Offline forever.
            [
                tide,
                "flower",
                "--port",
                str(flower_port),
                "--address=127.0.0.1",
                "--purge_offline_workers=60",
            ],
            log=str(var / "flower.log"),
        )
        services["Flower"] = f"http://127.0.0.1:{flower_port}/"
    services["logs"] = f"{var}/*.log"
    if no_ui:
        for name, url in services.items():
            click.echo(f"{name + ':':9} {url}")
    try:
        asyncio.run(
            _autoscale(
                pools=pools,
                supervisor=supervisor,
                var=var,
                services=services,
                exporter_url=f"http://127.0.0.1:{exporter_port}/metrics",
                no_ui=no_ui,
                policy=policy,
                notes=[
                    f"database: {local.database_note}",
                    f"broker: {local.broker_note}",
                    f"policy: {policy}",
                ],
            )
        )
    finally:
        click.echo("stopping services")
        supervisor.stop(grace=30)


async def _autoscale(
    *,
    pools: list[LocalPool],
    supervisor: Supervisor,
    var: Path,
    services: Mapping[str, str],
    exporter_url: str,
    no_ui: bool,
    policy: str,
    notes: list[str],
) -> None:
    import httpx

    from tide.local.autoscaler import PoolAutoscaler, log_step
    from tide.local.workers import LocalWorkers
    from tide_operator.adapters.sources import ExporterSource

    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # First signal: drain. Second: force (SIGKILL what still runs).
        (force if stop.is_set() else stop).set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    client = httpx.AsyncClient()
    # The operator's source, aimed at the local exporter (the pools' own URLs are cluster's).
    source = ExporterSource(exporter_url, client=client, timeout=2.0)
    autoscalers = [
        PoolAutoscaler(
            pool=pool,
            source=source,
            workers=LocalWorkers(pool=pool, env=dict(os.environ), log_dir=var),
            policy_name=policy,
            # Every decision is logged: to the terminal with --no-ui, else to
            # var/tide-up.log beside the view, so what the view showed can be read later.
            on_step=log_step,
        )
        for pool in pools
    ]
    tasks = [asyncio.create_task(a.run(stop)) for a in autoscalers]

    async def watch_services() -> None:
        while not stop.is_set():
            if dead := supervisor.dead():
                notes.append(f"{dead[0].name} exited with {dead[0].process.returncode}; stopping")
                logging.error(notes[-1])
                stop.set()
            await asyncio.sleep(0.5)

    tasks.append(asyncio.create_task(watch_services()))
    if no_ui:
        await stop.wait()
    else:
        from rich.live import Live

        from tide.local.view import render

        with Live(
            render(services=services, autoscalers=autoscalers, notes=notes),
            refresh_per_second=4,
            screen=False,
        ) as live:
            while not stop.is_set():
                live.update(render(services=services, autoscalers=autoscalers, notes=notes))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
    click.echo("draining: workers finish their tasks (Ctrl-C again to force)")
    await asyncio.gather(*tasks)
    grace = max(pool.grace_seconds for pool in pools)
    await asyncio.gather(*(a.workers.drain(grace=grace, force=force) for a in autoscalers))
    await client.aclose()
