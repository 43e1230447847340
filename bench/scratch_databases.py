"""Scratch PostgreSQL databases for the benchmarks: dropped and created fresh per run."""

from __future__ import annotations

import psycopg2

SERVER = "postgres://postgres@127.0.0.1:5432/postgres"


def recreate(name: str) -> str:
    """Drop ``name`` if it exists, create it empty, and return its URL."""
    conn = psycopg2.connect(SERVER)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return SERVER.rsplit("/", 1)[0] + f"/{name}"
