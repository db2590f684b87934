"""A real PostgreSQL stopped under a running gunicorn: Daraja's callbacks are answered as usual, kept in
the spool, and land in the inbox exactly once when PostgreSQL is back (docs/mpesa.md, "When PostgreSQL
is down").

Everything runs in processes of its own against an embedded PostgreSQL and Redis started for this test
(scripts/localservices.py, in a temporary folder on free ports, always stopped in the teardown):
`manage.py migrate`, gunicorn with one worker, `pg_ctl stop -m fast`, `manage.py mpesa_spool_import`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import requests

from tests.factories.mpesa import c2b_confirmation, c2b_validation, stk_success

pytestmark = [pytest.mark.localservices, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "localservices.py"
ACK = {"ResultCode": 0, "ResultDesc": "Success"}
VALIDATION_OK = {"ResultCode": "0", "ResultDesc": "Accepted"}

CREATE_TILLS = """
import json
from integrations.mpesa.models import Till
from tenancy.models import Business
business = Business.objects.create(name="Spool Water", kind="water")
warm = Till.objects.create(business=business, name="Warm", shortcode="600970")
cold = Till.objects.create(business=business, name="Cold", shortcode="600971")
print(json.dumps({"warm": warm.callback_token, "cold": cold.callback_token}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_localservices() -> ModuleType:
    spec = importlib.util.spec_from_file_location("localservices_for_spool_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class Stack:
    dir: Path
    spool: Path
    env: dict[str, str]
    localservices: ModuleType
    layout: Any

    def manage(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def postgres_stop(self) -> None:
        self.localservices.pg_stop(self.layout)  # pg_ctl stop -m fast

    def postgres_start(self) -> None:
        self.localservices.pg_start(self.layout)

    def inbox(self) -> list[tuple[str, str, str]]:
        with psycopg.connect(self.env["DATABASE_URL"], connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT kind, daraja_id, state FROM integrations_inboxmessage ORDER BY kind, daraja_id"
            ).fetchall()
        return [(str(k), str(d), str(s)) for k, d, s in rows]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Not under tmp_path: as root, PostgreSQL runs as another user who must traverse every parent, and
    # any pytest session starting meanwhile resets /tmp/pytest-of-<user> to 0700.
    services_dir = Path(tempfile.mkdtemp(prefix="backoffice-spool-test-"))
    base = services_dir / "local"
    pg_port, redis_port = free_port(), free_port()
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("PG")}
    command = [sys.executable, str(SCRIPT), "start", "--dir", str(base)]
    command += ["--pg-port", str(pg_port), "--redis-port", str(redis_port)]
    try:
        started = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean, check=False)
        assert started.returncode == 0, started.stderr
        localservices = load_localservices()
        layout = localservices.resolve_layout(argparse.Namespace(dir=str(base), pg_port=pg_port, redis_port=redis_port))
        env = {
            **clean,
            "DATABASE_URL": layout.database_url,
            "REDIS_URL": layout.redis_url,
            "DJANGO_DEBUG": "1",
            "MPESA_SPOOL_DIR": str(tmp_path / "spool"),
            "PYTHONUNBUFFERED": "1",
        }
        yield Stack(base, tmp_path / "spool", env, localservices, layout)
    finally:
        subprocess.run(
            [sys.executable, str(SCRIPT), "stop", "--dir", str(base)], capture_output=True, timeout=120, env=clean
        )
        shutil.rmtree(services_dir, ignore_errors=True)


@pytest.fixture
def gunicorn(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "backoffice.wsgi", f"--bind=127.0.0.1:{port}", "--workers=1"],
            cwd=ROOT,
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "gunicorn did not start:\n" + log.read_text()
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def send(base: str, token: str, suffix: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{base}/daraja/{token}/{suffix}", data=body, headers={"Content-Type": "application/json"}, timeout=20
    )


def spooled(stack: Stack) -> list[str]:
    return sorted(p.name for p in stack.spool.glob("*.json"))


def test_callbacks_while_postgres_is_stopped_reach_the_inbox_once_it_is_back(stack: Stack, gunicorn: str) -> None:
    stack.manage("migrate", "--noinput")
    tokens = json.loads(stack.manage("shell", "-c", CREATE_TILLS).stdout.strip().splitlines()[-1])
    warm, cold = tokens["warm"], tokens["cold"]
    stack.manage("mpesa_spool_import")  # as the sweeper does every minute: lists the tills' tokens
    # With the database up: stored at once (and the warm till is now in the web worker's cache).
    first = send(gunicorn, warm, "stk/", stk_success(checkout_id="ws_CO_UP0001", receipt="PGUP000001"))
    assert first.status_code == 200 and first.json() == ACK

    stack.postgres_stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(stack.env["DATABASE_URL"], connect_timeout=3)

    confirmation = c2b_confirmation(trans_id="PGDN000001", shortcode="600970")
    sent = [
        # the warm till is known without the database: the INSERT fails
        (warm, "c2b/confirm/", confirmation, ACK),
        (warm, "c2b/confirm/", confirmation, ACK),  # the same callback twice: one inbox row
        (warm, "stk/", stk_success(checkout_id="ws_CO_DN0001", receipt="PGDN000002"), ACK),
        (warm, "c2b/validate/", c2b_validation(trans_id="PGDN000003", shortcode="600970"), VALIDATION_OK),
        # the cold till was never looked up: the till lookup fails, the sweeper's list vouches for it
        (cold, "c2b/confirm/", c2b_confirmation(trans_id="PGDN000004", shortcode="600971"), ACK),
        (cold, "stk/", stk_success(checkout_id="ws_CO_DN0002", receipt="PGDN000005"), ACK),
    ]
    for token, suffix, body, answer in sent:
        response = send(gunicorn, token, suffix, body)
        assert response.status_code == 200, f"{suffix}: {response.status_code} {response.text[:300]}"
        assert response.json() == answer
    assert len(spooled(stack)) == len(sent)
    # nobody's token: not a till's as far as this process and the list know, so not kept (404)
    junk = send(gunicorn, "no-such-till-token", "c2b/confirm/", c2b_confirmation(trans_id="PGDN000006", shortcode="1"))
    assert junk.status_code == 404
    assert len(spooled(stack)) == len(sent)

    stack.postgres_start()
    imported = stack.manage("mpesa_spool_import").stdout
    assert "imported 5, duplicates 1, rejected 0" in imported, imported

    expected = [
        ("c2b_confirmation", "PGDN000001", "received"),
        ("c2b_confirmation", "PGDN000004", "received"),
        ("c2b_validation", "PGDN000003", "processed"),
        ("stk", "ws_CO_DN0001", "received"),
        ("stk", "ws_CO_DN0002", "received"),
        ("stk", "ws_CO_UP0001", "received"),
    ]
    assert stack.inbox() == expected
    assert spooled(stack) == []
    assert not list((stack.spool / "rejected").glob("*.json"))

    again = stack.manage("mpesa_spool_import").stdout
    assert "imported 0, duplicates 0, rejected 0" in again, again
    assert stack.inbox() == expected
    assert not list((stack.spool / "rejected").glob("*.json"))
