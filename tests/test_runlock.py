"""tests/runlock.py: a second run of the suite on the same test databases and Redis waits for the first."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests import runlock
from tests.runlock import APPLICATION_NAME, lock_url, locks_wait, run_keys


def connect() -> psycopg.Connection[Any]:
    return psycopg.connect(lock_url(os.environ["DATABASE_URL"]), autocommit=True)


def held_elsewhere(key: str) -> bool:
    with connect() as probe:
        row = probe.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key]).fetchone()
        return not (row is not None and row[0])


def test_the_keys_name_the_database_and_each_redis_database_of_the_run() -> None:
    env = {"DATABASE_URL": "postgresql://u@db.example:5433/shop", "REDIS_URL": "redis://cache:6380/3"}
    assert run_keys(env, 3) == [
        "backoffice-tests pg=db.example:5433/test_shop",
        "backoffice-tests redis=cache:6380/15",
        "backoffice-tests redis=cache:6380/14",
        "backoffice-tests redis=cache:6380/13",
    ]
    assert run_keys({**env, "TEST_REDIS_DB": "9"}, 0)[1:] == ["backoffice-tests redis=cache:6380/9"]
    assert run_keys({}, 3) == []
    # the test database's name is what two runs share, whatever DATABASE_URL names (backoffice/settings.py)
    named = {**env, "DATABASE_URL": "postgresql://u@db.example:5433/other", "TEST_DATABASE_NAME": "test_shop"}
    assert run_keys(named, 1)[0] == "backoffice-tests pg=db.example:5433/test_shop"


def test_the_locks_are_taken_in_the_servers_postgres_database() -> None:
    """Advisory locks belong to a database: two runs on other database names share their Redis ones."""
    assert (
        lock_url("postgresql://u:p@db:5433/shop?sslmode=require") == "postgresql://u:p@db:5433/postgres?sslmode=require"
    )


def test_this_run_holds_its_locks() -> None:
    """The plugin is on: this run's first process holds its database's lock on a connection of its own."""
    (key,) = run_keys(os.environ, 1)[:1]
    assert held_elsewhere(key)
    with connect() as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APPLICATION_NAME]
        ).fetchone()
    assert row is not None and row[0] >= 1


def test_a_second_run_waits_says_so_and_holds_nothing_while_it_waits() -> None:
    keys = [f"runlock-test {uuid.uuid4()} {part}" for part in ("pg", "redis")]
    said: list[str] = []
    with connect() as first, connect() as second:
        first.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [keys[1]])
        assert not locks_wait(second, keys, 1.5, said.append)
        assert len(said) == 1 and keys[1] in said[0] and "waiting" in said[0]
        # the part it could take was given back: a third run is not kept waiting on it by the second
        assert not held_elsewhere(keys[0])


def test_a_second_run_goes_on_when_the_first_ends() -> None:
    keys = [f"runlock-test {uuid.uuid4()} {part}" for part in ("pg", "redis")]
    said: list[str] = []
    first = connect()
    first.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [keys[0]])
    ends = threading.Timer(1.0, first.close)  # the first run ends (or dies): its locks go with it
    ends.start()
    try:
        with connect() as second:
            assert locks_wait(second, keys, 30, said.append)
            assert all(held_elsewhere(key) for key in keys)
    finally:
        ends.join()
        first.close()
    assert len(said) == 1


def test_without_a_postgres_database_the_locks_are_held_on_the_runs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlock, "lock_url", lambda url: url.rsplit("/", 1)[0] + "/no_such_database_here")
    with runlock.lock_connect(os.environ["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None and row[0] == urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/")
    with pytest.raises(psycopg.OperationalError):
        runlock.lock_connect("postgresql://postgres@127.0.0.1:1/backoffice")  # nothing listens there


def test_commands_that_run_no_tests_do_not_wait_for_a_run() -> None:
    """`pytest --markers` beside a running suite (this one holds its locks now) answers at once."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env["TEST_RUN_LOCK_WAIT"] = "3"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "another test run" not in done.stderr and "@pytest.mark.worker" in done.stdout
    assert time.monotonic() - started < 60
