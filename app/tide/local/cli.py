"""``tide up``: the whole platform on one machine, autoscaling real workers.

With Tide's reference app: chooses a database and broker (``environment``), applies
migrations, makes sure an API user and token exist, starts the API (gunicorn), the
exporter, beat and Flower as child processes, then runs the autoscaler for each WorkerPool
in this process, with a live view.

With a team's own app (``--app myproject``): the workers are the app's (``celery -A
myproject worker``, or the pool's own command), in the team's environment untouched by
Tide's settings; the exporter, the probe and Flower use the app's broker and transport
options, read from the app itself (``tide.local.apps``); Tide's API and database stay off,
and beat is the app's own when asked for (``--beat``).

Either way, before anything starts, every pool's queues are checked for tasks its app does
not register (``tide.local.guard``): a worker would discard them, so ``tide up`` refuses to
start and names them (or reports them and goes on, with ``--unknown-tasks=report``).

Ctrl-C (or SIGTERM) drains: autoscaling stops, workers warm-shut down and finish their
tasks, then the services stop. A second Ctrl-C forces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from tide.local.apps import TIDE_APP, AppError, AppInfo, read_app
from tide.local.environment import LocalEnvironment, choose
from tide.local.guard import MODES, Mode, TaskGuard
from tide.local.load import TOKEN_FILE
from tide.local.pools import LocalPool, PoolFileError, load_pools
from tide.local.processes import Supervisor
from tide.local.workers import LocalWorkers

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
@click.option(
    "--app",
    "app_name",
    default=None,
    envvar="TIDE_APP",
    help="Your Celery app (celery -A APP), e.g. myproject or myproject.celery: the pools run "
    "its workers. Default: Tide's reference app.",
)
@click.option(
    "--api/--no-api",
    default=None,
    help="Tide's jobs API (and its database). Default: on for Tide's app, off with --app.",
)
@click.option(
    "--beat/--no-beat",
    default=None,
    help="Celery beat of the app. Default: on for Tide's app, off with --app.",
)
@click.option(
    "--unknown-tasks",
    type=click.Choice(MODES),
    default="refuse",
    show_default=True,
    help="When a pool's queues hold tasks its app does not register: refuse to start the "
    "pool, or report them and start it anyway.",
)
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
@click.option(
    "--keyspace",
    default=None,
    help="Broker keyspace (Redis key prefix) of this platform: its queues, results and "
    "control. Default: one of its own per var directory, so two `tide up`s on one Redis "
    "never take each other's jobs; give two the same name to share. Ignored when "
    "CELERY_BROKER_KEYPREFIX or TIDE_BROKER_TRANSPORT_OPTIONS is set, and with --app "
    "(the app's own layout).",
)
def up(
    pools_file: Path | None,
    port: int,
    exporter_port: int,
    flower_port: int,
    app_name: str | None,
    api: bool | None,
    beat: bool | None,
    unknown_tasks: Mode,
    no_flower: bool,
    no_ui: bool,
    policy: str,
    user: str,
    var_dir: Path | None,
    embedded: bool,
    keyspace: str | None,
) -> None:
    """Run the platform locally and autoscale worker processes until Ctrl-C."""
    try:
        pools = load_pools(pools_file)
    except PoolFileError as exc:
        raise click.ClickException(str(exc)) from None
    with_api = (app_name is None) if api is None else api
    check_ports(
        {
            "API (--port)": port if with_api else None,
            "exporter (--exporter-port)": exporter_port,
            "Flower (--flower-port)": None if no_flower else flower_port,
        }
    )
    if app_name is not None:
        if api:
            raise click.UsageError(
                "--api is Tide's jobs API for Tide's reference app; with --app your own app "
                "serves its users: leave --api out"
            )
        # The team's environment, before anything of Tide's is added to this process's.
        team_env = team_environment(os.environ)
        var = _var(var_dir, no_ui)
        _up_app(
            pools=pools,
            app_name=app_name,
            team_env=team_env,
            var=var,
            exporter_port=exporter_port,
            flower_port=None if no_flower else flower_port,
            beat=bool(beat),
            unknown_tasks=unknown_tasks,
            no_ui=no_ui,
            policy=policy,
        )
        return
    var = _var(var_dir, no_ui)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")
    local = choose(var, embedded=embedded)
    os.environ.update(local.env())
    told = os.environ.get("CELERY_BROKER_KEYPREFIX") or os.environ.get(
        "TIDE_BROKER_TRANSPORT_OPTIONS"
    )
    if not told and local.broker_url.startswith("redis"):
        # Every child (API, exporter, beat, Flower, workers) reads the prefix from here.
        os.environ["CELERY_BROKER_KEYPREFIX"] = keyspace_prefix(var, keyspace)
    local.keyspace_note = os.environ.get("CELERY_BROKER_KEYPREFIX", "")
    try:
        # Tide's app is checked like any other: a pool file naming another app's queues
        # must not let Tide's workers discard that app's messages.
        app = _read(TIDE_APP, env=os.environ)
        workers = _workers(
            pools, default_app=app, env=dict(os.environ), var=var, mode=unknown_tasks
        )
        _up(
            pools=pools,
            workers=workers,
            local=local,
            var=var,
            port=port,
            exporter_port=exporter_port,
            flower_port=None if no_flower else flower_port,
            api=True if api is None else api,
            beat=True if beat is None else beat,
            no_ui=no_ui,
            policy=policy,
            user=user,
        )
    finally:
        local.close()


def check_ports(ports: Mapping[str, int | None]) -> None:
    """Refuse to start when a port is taken (another ``tide up``?), naming it.

    Checked before anything starts, so a second ``tide up`` leaves the first one alone
    and exits non-zero instead of starting half a platform that cannot listen.
    """
    import socket

    for what, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers themselves bind (gunicorn, the exporter, Flower): connections
            # of the last run left in TIME_WAIT do not make the port busy, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise click.ClickException(
                    f"port {port} for the {what} is in use ({exc.strerror}): is another "
                    f"`tide up` running? Stop it, or choose another port with the option named"
                ) from None


def keyspace_prefix(var: Path, keyspace: str | None) -> str:
    """The Redis key prefix of this platform: the name given, else one per var directory.

    The same directory gets the same prefix at every start (its queue, kept by the broker,
    is found again); another directory gets another, so two platforms on one Redis keep
    their jobs apart.
    """
    import hashlib

    if keyspace:
        return keyspace if keyspace.endswith(":") else f"{keyspace}:"
    digest = hashlib.sha256(str(var.resolve()).encode()).hexdigest()[:10]
    return f"tide-{digest}:"


def team_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The team's environment: this process's, less Tide's settings module.

    Importing Tide (which ``tide`` itself does) sets ``DJANGO_SETTINGS_MODULE`` to Tide's
    settings when it was unset; a team's Django project loading Tide's settings would be
    Tide's app, not theirs. Everything else is the team's own, as they run it.
    """
    env = dict(environ)
    if env.get("DJANGO_SETTINGS_MODULE", "").startswith("tide.settings"):
        del env["DJANGO_SETTINGS_MODULE"]
    return env


def _var(var_dir: Path | None, no_ui: bool) -> Path:
    var = (var_dir or Path.cwd() / "var").resolve()
    var.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        filename=None if no_ui else str(var / "tide-up.log"),
    )
    # One line per scrape would drown the decisions.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return var


def _read(name: str, *, env: Mapping[str, str]) -> AppInfo:
    try:
        return read_app(name, env=env)
    except AppError as exc:
        raise click.ClickException(str(exc)) from None


def _workers(
    pools: list[LocalPool],
    *,
    default_app: AppInfo,
    env: Mapping[str, str],
    var: Path,
    mode: Mode,
) -> dict[str, LocalWorkers]:
    """Each pool's workers, once its queues were checked against its app's tasks.

    Refused pools stop ``tide up`` here, before any process starts, with every refusal
    listed; reported ones are printed and started.
    """
    from tide_celery.recovery import Recoveries
    from tide_operator.adapters.targets import CeleryInspectProbe

    apps = {default_app.name: default_app}
    workers: dict[str, LocalWorkers] = {}
    refusals: list[str] = []
    for pool in pools:
        program, name = pool.worker_program(default_app.name)
        app = apps.get(name) or apps.setdefault(name, _read(name, env=env))
        if (app.broker_url, app.transport_options) != (
            default_app.broker_url,
            default_app.transport_options,
        ):
            raise click.ClickException(
                f"pool {pool.name!r} runs {name!r}, whose broker or transport options differ "
                f"from {default_app.name!r}'s: one `tide up` serves one broker"
            )
        guard = TaskGuard(pool=pool.name, app=app, mode=mode)
        finding = guard.check(pool.queues)
        if finding is not None:
            if mode == "refuse":
                refusals.append(finding.message())
                continue
            click.secho(finding.message(), fg="red", err=True)
        workers[pool.name] = LocalWorkers(
            pool=pool,
            env=env,
            log_dir=var,
            program=program,
            probe=CeleryInspectProbe(
                app.broker_url, timeout=1.0, transport_options=app.transport_options
            ),
            guard=guard,
            warning=finding.message() if finding is not None else "",
            # One broker per `tide up` (checked above): dead workers' messages go back.
            recoveries=Recoveries(app.broker_url, transport_options=app.transport_options),
        )
    if refusals:
        raise click.ClickException(
            "refusing to start: " + "\n".join(refusals) + "\nNothing was started or taken."
        )
    return workers


def _up(
    *,
    pools: list[LocalPool],
    workers: Mapping[str, LocalWorkers],
    local: LocalEnvironment,
    var: Path,
    port: int,
    exporter_port: int,
    flower_port: int | None,
    api: bool,
    beat: bool,
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
    if local.keyspace_note:
        click.echo(f"keyspace: {local.keyspace_note} (Redis key prefix; --keyspace to share)")
    services: dict[str, str] = {}
    supervisor = Supervisor(env=dict(os.environ))
    tide = _bin("tide")
    if api or beat:
        call_command("migrate", interactive=False, verbosity=0)
    if api:
        token = ensure_token(user)
        # ``tide load`` (and the reader) find the token here.
        (var / TOKEN_FILE).write_text(token + "\n")
        (var / TOKEN_FILE).chmod(0o600)
        # The same user logs in to the admin (/admin/) with the password kept beside it.
        ensure_admin_login(user, var / "admin-password")
        supervisor.start(
            "api",
            [tide, "api", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            log=str(var / "api.log"),
        )
        services.update(
            {
                "start": f"http://127.0.0.1:{port}/  (the API, its docs and the admin)",
                "API": f"http://127.0.0.1:{port}/api/  (Authorization: Token {token})",
                "docs": f"http://127.0.0.1:{port}/api/docs/  (Swagger UI; Redoc at /api/redoc/)",
                "admin": f"http://127.0.0.1:{port}/admin/  (user {user}, password in "
                f"{var}/admin-password)",
            }
        )
    _start_exporter(supervisor, tide=tide, pools=pools, var=var, port=exporter_port)
    services["metrics"] = f"http://127.0.0.1:{exporter_port}/metrics"
    if beat:
        # The schedule and its last-run times live in this platform's database (the
        # SQLite file under var/, or DATABASE_URL), with the periodic tasks users make.
        supervisor.start("beat", [tide, "beat"], log=str(var / "beat.log"))
    if flower_port:
        # Scaled-in workers are gone for good: Flower drops them a minute after they go
        # offline instead of listing every one as Offline forever.
        supervisor.start(
            "flower",
            [tide, "flower", "--port", str(flower_port), "--address=127.0.0.1", *FLOWER_ARGS],
            log=str(var / "flower.log"),
        )
        services["Flower"] = f"http://127.0.0.1:{flower_port}/"
    _serve(
        pools=pools,
        workers=workers,
        supervisor=supervisor,
        var=var,
        services=services,
        exporter_port=exporter_port,
        no_ui=no_ui,
        policy=policy,
        notes=[
            f"database: {local.database_note}",
            f"broker: {local.broker_note}",
            *([f"keyspace: {local.keyspace_note}"] if local.keyspace_note else []),
            f"policy: {policy}",
        ],
    )


FLOWER_ARGS = ("--purge_offline_workers=60",)
#: The view keeps the latest notes (deaths, restarts) beside its fixed lines.
NOTES_KEPT = 12


def _start_exporter(
    supervisor: Supervisor,
    *,
    tide: str,
    pools: list[LocalPool],
    var: Path,
    port: int,
    broker_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    queues = sorted({q for pool in pools for q in pool.queues})
    argv = [tide, "exporter", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--queues", ",".join(queues), "--interval", "1"]
    if broker_url:
        argv += ["--broker-url", broker_url]
    supervisor.start("exporter", argv, log=str(var / "exporter.log"), env=env)


def _serve(
    *,
    pools: list[LocalPool],
    workers: Mapping[str, LocalWorkers],
    supervisor: Supervisor,
    var: Path,
    services: dict[str, str],
    exporter_port: int,
    no_ui: bool,
    policy: str,
    notes: list[str],
) -> None:
    """Autoscale until Ctrl-C with the services started, then stop them."""
    services["logs"] = f"{var}/*.log"
    if no_ui:
        for name, url in services.items():
            click.echo(f"{name + ':':9} {url}")
    try:
        asyncio.run(
            _autoscale(
                pools=pools,
                workers=workers,
                supervisor=supervisor,
                services=services,
                exporter_url=f"http://127.0.0.1:{exporter_port}/metrics",
                no_ui=no_ui,
                policy=policy,
                notes=notes,
            )
        )
    finally:
        click.echo("stopping services")
        supervisor.stop(grace=30)


def _up_app(
    *,
    pools: list[LocalPool],
    app_name: str,
    team_env: Mapping[str, str],
    var: Path,
    exporter_port: int,
    flower_port: int | None,
    beat: bool,
    unknown_tasks: Mode,
    no_ui: bool,
    policy: str,
) -> None:
    """``tide up --app``: the team's workers, beat and Flower, Tide's exporter on their broker."""
    app = _read(app_name, env=team_env)
    click.echo(
        f"app:      {app.name} ({len([t for t in app.tasks if not t.startswith('celery.')])} "
        f"tasks, queues {', '.join(app.queues)})"
    )
    click.echo(f"broker:   {_safe_url(app.broker_url)} (the app's)")
    workers = _workers(pools, default_app=app, env=team_env, var=var, mode=unknown_tasks)
    # Tide's exporter reads the app's broker with the app's transport options, and loads
    # Tide's settings only for its own defaults (no database).
    tide_env = {
        **team_env,
        "DJANGO_SETTINGS_MODULE": "tide.settings.local",
        "CELERY_BROKER_URL": app.broker_url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(dict(app.transport_options)),
    }
    tide_env.pop("CELERY_BROKER_KEYPREFIX", None)
    supervisor = Supervisor(env=dict(team_env))
    tide = _bin("tide")
    _start_exporter(
        supervisor,
        tide=tide,
        pools=pools,
        var=var,
        port=exporter_port,
        broker_url=app.broker_url,
        env=tide_env,
    )
    services = {"metrics": f"http://127.0.0.1:{exporter_port}/metrics"}
    celery = _bin("celery")
    if beat:
        schedule = str(var / "celerybeat-schedule")
        supervisor.start(
            "beat",
            [celery, "-A", app.name, "beat", "--loglevel", "INFO", "--schedule", schedule],
            log=str(var / "beat.log"),
        )
    if flower_port:
        supervisor.start(
            "flower",
            [celery, "-A", app.name, "flower", f"--port={flower_port}", "--address=127.0.0.1",
             *FLOWER_ARGS],
            log=str(var / "flower.log"),
        )  # fmt: skip
        services["Flower"] = f"http://127.0.0.1:{flower_port}/"
    _serve(
        pools=pools,
        workers=workers,
        supervisor=supervisor,
        var=var,
        services=services,
        exporter_port=exporter_port,
        no_ui=no_ui,
        policy=policy,
        notes=[f"app: {app.name}", f"broker: {_safe_url(app.broker_url)}", f"policy: {policy}"],
    )


def _safe_url(url: str) -> str:
    """A broker URL fit to print: the password masked, as Celery's banner does."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


async def _autoscale(
    *,
    pools: list[LocalPool],
    workers: Mapping[str, LocalWorkers],
    supervisor: Supervisor,
    services: Mapping[str, str],
    exporter_url: str,
    no_ui: bool,
    policy: str,
    notes: list[str],
) -> None:
    import httpx

    from tide.local.autoscaler import PoolAutoscaler, log_step
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
            workers=workers[pool.name],
            policy_name=policy,
            # Every decision is logged: to the terminal with --no-ui, else to
            # var/tide-up.log beside the view, so what the view showed can be read later.
            on_step=log_step,
        )
        for pool in pools
    ]
    tasks = [asyncio.create_task(a.run(stop)) for a in autoscalers]

    async def watch_services() -> None:
        # A dead service is restarted with back-off and reported, never a reason to stop
        # the platform: the autoscaler holds (or falls back) while the exporter is away.
        fixed = len(notes)
        while not stop.is_set():
            reports = supervisor.heal()
            for pool_workers in workers.values():
                reports += pool_workers.take_reports()
            for report in reports:
                notes.append(report)
                logging.warning(report)
            del notes[fixed : max(fixed, len(notes) - NOTES_KEPT)]
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
