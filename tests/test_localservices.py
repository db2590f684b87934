"""scripts/localservices.py: embedded PostgreSQL + Redis for `make run` / `make test`.

Needs no Django and no database fixture: the script is run as a subprocess against a temporary
--dir on free ports, and the servers it starts are always stopped in the fixture teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

pytestmark = pytest.mark.localservices

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "localservices.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Services:
    dir: Path
    pg_port: int
    redis_port: int

    def run(self, command: str, *, ports: bool = True) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, str(SCRIPT), command, "--dir", str(self.dir)]
        if ports:
            args += ["--pg-port", str(self.pg_port), "--redis-port", str(self.redis_port)]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        # capture_output uses pipes: this also proves no daemon keeps stdout open, which would
        # hang `eval "$(python scripts/localservices.py start)"` in the Makefile
        return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)

    def start(self) -> dict[str, str]:
        proc = self.run("start")
        assert proc.returncode == 0, proc.stderr
        return parse_exports(proc.stdout)


def parse_exports(stdout: str) -> dict[str, str]:
    lines = stdout.strip().splitlines()
    assert lines, "no export lines on stdout"
    assert all(line.startswith("export ") for line in lines), f"stdout must hold only export lines: {stdout!r}"
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    pg_port = free_port()
    redis_port = free_port()
    while redis_port == pg_port:
        redis_port = free_port()
    svc = Services(tmp_path / "local", pg_port, redis_port)
    try:
        yield svc
    finally:
        svc.run("stop", ports=False)


def check_postgres(url: str) -> None:
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("backoffice", "postgres")
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)


def check_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


def test_start_is_idempotent_and_stop_closes_ports(services: Services) -> None:
    env = services.start()
    assert env == {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{services.pg_port}/backoffice",
        "REDIS_URL": f"redis://127.0.0.1:{services.redis_port}/0",
    }
    check_postgres(env["DATABASE_URL"])
    check_redis(env["REDIS_URL"])
    assert services.run("status", ports=False).returncode == 0

    assert services.start() == env  # second start: already running, same URLs
    check_postgres(env["DATABASE_URL"])

    env_only = services.run("env", ports=False)  # defaults to the ports of the last start
    assert env_only.returncode == 0
    assert parse_exports(env_only.stdout) == env

    stop = services.run("stop", ports=False)
    assert stop.returncode == 0, stop.stderr
    assert not port_open(services.pg_port)
    assert not port_open(services.redis_port)
    assert services.run("status", ports=False).returncode == 1
    assert services.run("stop", ports=False).returncode == 0  # stopping twice is fine


def test_start_recovers_from_killed_servers(services: Services) -> None:
    env = services.start()
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    pg_pidfile = services.dir / "pgdata" / "postmaster.pid"
    redis_pidfile = services.dir / "redis" / "redis.pid"
    for pidfile in (pg_pidfile, redis_pidfile):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    for port in (services.pg_port, services.redis_port):
        deadline = time.monotonic() + 10
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert pg_pidfile.exists()
    assert redis_pidfile.exists()
    assert services.run("status", ports=False).returncode == 1

    assert services.start() == env  # the stale postmaster.pid / redis.pid are cleaned up
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
    check_redis(env["REDIS_URL"])
