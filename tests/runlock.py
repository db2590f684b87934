"""Loaded with `-p tests.runlock`: one run of this suite at a time per test database and Redis.

Two runs against the same PostgreSQL database name and Redis (`make test` in two clones on one
machine, a developer's run beside CI's) would share their test databases (test_<name>_gw0, ...) and
their Redis databases (15, 14, ...: tests/envdefaults.py). One run's database set-up, flushes and
teardown and its FLUSHDBs would land in the other run's tests, as failures that say nothing of their
cause.

So the run's first process (pytest-xdist's controller, or the only process) takes a PostgreSQL
advisory lock on each (in the server's `postgres` database) before any test database is made, and
holds them on a connection of its own until the run ends. A second run waits for it and says so;
the locks go with the first run's connection, also when that run is killed. TEST_RUN_LOCK_WAIT
(seconds, default 1800) bounds the wait: then the second run stops with a message instead of
running into the first.

Not covered: a replacement for a crashed xdist process takes the next free id (gw3 of a 3-process
run), so a database and a Redis database beyond those locked.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

DEFAULT_WAIT_SECONDS = 1800.0
REPORT_EVERY_SECONDS = 60.0
APPLICATION_NAME = "backoffice test run lock"


def run_keys(environ: Mapping[str, str], processes: int) -> list[str]:
    """What two runs would share: the test databases' name on their server (TEST_DATABASE_NAME, else
    pytest-django's test_<name of DATABASE_URL's database>; the xdist processes add _gw0, _gw1, ...), and
    each Redis database the run's `processes` use on its server (TEST_REDIS_DB, one lower per xdist
    process). Servers are compared as written: localhost and 127.0.0.1 count as two. Empty without a
    DATABASE_URL (settings refuse to start then)."""
    database_url = environ.get("DATABASE_URL", "")
    if not database_url:
        return []
    db = urlsplit(database_url)
    test_name = environ.get("TEST_DATABASE_NAME") or f"test_{db.path.lstrip('/')}"
    redis = urlsplit(environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    first = int(environ.get("TEST_REDIS_DB", "15"))
    keys = [f"backoffice-tests pg={db.hostname or 'localhost'}:{db.port or 5432}/{test_name}"]
    redis_server = f"{redis.hostname or 'localhost'}:{redis.port or 6379}"
    keys += [f"backoffice-tests redis={redis_server}/{first - i}" for i in range(max(1, processes))]
    return keys


def lock_url(database_url: str) -> str:
    """The server's `postgres` database: advisory locks belong to a database, and two runs on other
    database names still share their Redis databases."""
    parts = urlsplit(database_url)
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))


def locks_wait(conn: psycopg.Connection[Any], keys: list[str], wait_seconds: float, say: Callable[[str], None]) -> bool:
    """Take the session advisory locks `keys` on `conn`, all or none at a time (two runs that each hold
    a part never wait on each other), waiting up to `wait_seconds` and saying so at once and then every
    minute. False if another run still held one of them at the end."""
    deadline = time.monotonic() + wait_seconds
    next_report = 0.0
    while True:
        taken: list[str] = []
        for key in keys:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key]).fetchone()
            if row is None or not row[0]:
                break
            taken.append(key)
        if len(taken) == len(keys):
            return True
        for key in taken:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
        busy = keys[len(taken)]
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_report:
            say(f"another test run holds {busy!r}: waiting for it to end (up to {deadline - now:.0f} s more)")
            next_report = now + REPORT_EVERY_SECONDS
        time.sleep(min(1.0, deadline - now))


def lock_connect(database_url: str) -> psycopg.Connection[Any]:
    """A connection to hold the locks on: the server's `postgres` database, else DATABASE_URL's own
    (a server without `postgres`, or a role that may not connect to it: the locks then only keep out
    runs on the same database name). Raises psycopg.OperationalError when neither answers."""
    try:
        return psycopg.connect(
            lock_url(database_url), autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10
        )
    except psycopg.OperationalError:
        return psycopg.connect(database_url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10)


def _runs_no_tests(config: pytest.Config) -> bool:
    """--help, --version, --markers, --fixtures, --collect-only: nothing to keep apart."""
    option = config.option
    return any(getattr(option, name, False) for name in ("help", "version", "markers", "showfixtures", "collectonly"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or _runs_no_tests(config):
        return  # the controller holds the locks for the whole run
    processes = config.getoption("numprocesses", default=None)
    keys = run_keys(os.environ, processes if isinstance(processes, int) else 1)
    if not keys:
        return
    wait = float(os.environ.get("TEST_RUN_LOCK_WAIT", DEFAULT_WAIT_SECONDS))
    try:
        conn = lock_connect(os.environ["DATABASE_URL"])
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL (DATABASE_URL) does not answer, so the tests cannot run: {exc}", returncode=2)

    def say(line: str) -> None:
        sys.stderr.write(f"tests/runlock.py: {line}\n")
        sys.stderr.flush()

    if not locks_wait(conn, keys, wait, say):
        conn.close()
        pytest.exit(
            f"another test run still holds a lock of {keys} after {wait:.0f} s (TEST_RUN_LOCK_WAIT): two runs "
            "on the same test databases or Redis databases would break each other's tests. Wait for it, or "
            "give this run another database name in DATABASE_URL and another TEST_REDIS_DB.",
            returncode=2,
        )
    config.stash[_LOCK] = conn


def pytest_unconfigure(config: pytest.Config) -> None:
    conn = config.stash.get(_LOCK, None)
    if conn is not None:
        conn.close()  # the session locks go with the connection


_LOCK = pytest.StashKey[psycopg.Connection[Any]]()
