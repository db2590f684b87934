"""Scratch databases for the benchmarks: each benchmark works in a database of its own on the
server of DATABASE_URL, created empty at the start and dropped at the end (unless BENCH_KEEP_DB)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg


def with_db(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def recreate_database(database_url: str, name: str) -> str:
    """Drop `name` if it exists (closing its connections), create it empty, return its URL."""
    with psycopg.connect(with_db(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_db(database_url, name)


def drop_database(database_url: str, name: str) -> None:
    """Drop `name`, unless BENCH_KEEP_DB is set (to look at the data afterwards)."""
    if os.environ.get("BENCH_KEEP_DB"):
        return
    with psycopg.connect(with_db(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
