"""tests/runlock.py: a second run of the suite on the same test databases and Redis waits for the first."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import psycopg

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
        "backoffice-tests pg=db.example:5433/shop",
        "backoffice-tests redis=cache:6380/15",
        "backoffice-tests redis=cache:6380/14",
        "backoffice-tests redis=cache:6380/13",
    ]
    assert run_keys({**env, "TEST_REDIS_DB": "9"}, 0)[1:] == ["backoffice-tests redis=cache:6380/9"]
    assert run_keys({}, 3) == []


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
