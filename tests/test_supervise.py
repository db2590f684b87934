"""scripts/supervise.py, `make run`'s supervisor: a process that dies is started again, the state file
names the live pids, and SIGTERM stops every process group (what `make chaos` relies on)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


@pytest.fixture
def supervised(tmp_path: Path):  # type: ignore[no-untyped-def]
    procfile = tmp_path / "Procfile"
    # `child` leaves a grandchild in its process group, as a Celery main leaves its pool processes.
    procfile.write_text(
        "# a comment\n"
        f"sleeper: {sys.executable} -c 'import time; time.sleep(600)'\n"
        f"child: {sys.executable} -c 'import subprocess, sys, time; "
        f'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]); '
        f'open("{tmp_path}/grandchild", "w").write(str(p.pid)); time.sleep(600)\'\n'
    )
    state = tmp_path / "processes.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--procfile", str(procfile), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def pids() -> dict[str, int | None]:
        try:
            return {k: v["pid"] for k, v in json.loads(state.read_text()).items()}
        except (OSError, ValueError):
            return {}

    _wait(lambda: pids().get("sleeper") and pids().get("child") and (tmp_path / "grandchild").exists())
    yield proc, pids, tmp_path
    # Each process runs in a process group of its own, which killing the supervisor's group does not
    # reach: ask the supervisor to stop them (as SIGTERM does in production), then end what is left.
    last = [pid for pid in pids().values() if pid]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in last:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    _wait(lambda: not any(_alive(pid) for pid in last))  # nothing outlives the test


def test_a_killed_process_is_started_again_and_its_leftovers_go(supervised) -> None:  # type: ignore[no-untyped-def]
    _proc, pids, tmp_path = supervised
    old_child = pids()["child"]
    grandchild = int((tmp_path / "grandchild").read_text())
    (tmp_path / "grandchild").unlink()
    os.kill(old_child, signal.SIGKILL)
    _wait(lambda: pids().get("child") not in (None, old_child))
    assert _alive(pids()["child"])
    _wait(lambda: not _alive(grandchild))  # the old process group is gone with it
    assert _alive(pids()["sleeper"])  # the others are left alone (honcho stopped them all)


def test_sigterm_stops_every_process(supervised) -> None:  # type: ignore[no-untyped-def]
    proc, pids, tmp_path = supervised
    started = pids()
    grandchild = int((tmp_path / "grandchild").read_text())
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    output = proc.stdout.read().decode()
    assert "stopping sleeper" in output and "stopping child" in output
    for pid in (started["sleeper"], started["child"], grandchild):
        _wait(lambda pid=pid: not _alive(pid), 10)


def test_a_bad_procfile_line_is_refused(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("this is not a process line\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--procfile", str(procfile)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "not `name: command`" in done.stderr


def test_make_run_starts_the_procfile_under_the_supervisor() -> None:
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    assert "scripts/supervise.py --procfile Procfile" in run_sh
    assert "honcho" not in run_sh


def test_chaos_computes_the_inbox_body_digest() -> None:
    from bench.chaos import stored_sha256
    from integrations.mpesa.inbox import body_sha256, body_text

    for raw in (b'{"a": 1}', b"\xff\xfe bad utf-8", b"nul \x00 inside", b""):
        assert stored_sha256(raw) == body_sha256(body_text(raw))
