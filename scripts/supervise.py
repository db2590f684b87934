#!/usr/bin/env python3
"""Run the Procfile's processes together and restart any that dies: `make run`'s supervisor.

    python scripts/supervise.py [--procfile Procfile] [--state FILE]

Each line `name: command` of the Procfile runs as `sh -c "exec command"` (so $VARS expand and the
process itself, not a shell, has the pid) in a process group of its own; its output is printed
with `HH:MM:SS name |` in front, as honcho does. A process that exits - crashed, killed, out of
memory - is started again after a second, as docker compose's `restart: unless-stopped` does in
production; one that keeps dying waits longer each time (up to 30 s), so a broken command does not
spin. Ctrl-C (SIGINT) or SIGTERM stops everything: SIGTERM to each process group (Celery finishes
its tasks, gunicorn its requests), SIGKILL after --stop-timeout seconds.

--state names a JSON file rewritten at every start and exit: {name: {"pid", "started", "restarts"}}.
`make chaos` (bench/chaos.py) reads it to find the processes it kills. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
RESTART_DELAY = 1.0
MAX_DELAY = 30.0
# A process that ran at least this long before dying starts again after RESTART_DELAY: the backoff is
# only for one that dies as it starts.
HEALTHY_AFTER = 10.0


@dataclass
class Proc:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = RESTART_DELAY
    due: float = 0.0  # when to start it again after an exit
    readers: list[threading.Thread] = field(default_factory=list)


def read_procfile(path: Path) -> list[Proc]:
    procs = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if match is None:
            raise SystemExit(f"{path}:{number}: not `name: command`: {raw!r}")
        procs.append(Proc(match.group(1), match.group(2)))
    if not procs:
        raise SystemExit(f"{path}: no processes")
    return procs


class Supervisor:
    def __init__(self, procs: list[Proc], state: Path | None, stop_timeout: float) -> None:
        self.procs = procs
        self.state = state
        self.stop_timeout = stop_timeout
        self.stopping = threading.Event()
        self.out_lock = threading.Lock()
        self.width = max(len(p.name) for p in procs)

    def say(self, name: str, text: str) -> None:
        with self.out_lock:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} | {text}\n")
            sys.stdout.flush()

    def _pipe(self, proc: Proc, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            self.say(proc.name, raw.decode("utf-8", "replace").rstrip("\n"))

    def start(self, proc: Proc) -> None:
        proc.popen = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {proc.command}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.started = time.monotonic()
        reader = threading.Thread(target=self._pipe, args=(proc, proc.popen.stdout), daemon=True)
        reader.start()
        proc.readers = [reader]
        self.say("supervise", f"{proc.name} started (pid {proc.popen.pid})")
        self.write_state()

    def write_state(self) -> None:
        if self.state is None:
            return
        data = {
            p.name: {"pid": p.popen.pid if p.popen and p.popen.poll() is None else None, "restarts": p.restarts}
            for p in self.procs
        }
        data["supervise"] = {"pid": os.getpid(), "restarts": 0}
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state)

    def loop(self) -> None:
        for proc in self.procs:
            self.start(proc)
        while not self.stopping.is_set():
            now = time.monotonic()
            for proc in self.procs:
                if proc.popen is not None and proc.popen.poll() is not None:
                    code = proc.popen.returncode
                    ran = now - proc.started
                    proc.delay = RESTART_DELAY if ran >= HEALTHY_AFTER else min(MAX_DELAY, proc.delay * 2)
                    proc.due = now + proc.delay
                    how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    again = f"starting it again in {proc.delay:.0f} s"
                    self.say("supervise", f"{proc.name} {how} after {ran:.0f} s; {again}")
                    # What it leaves behind (a Celery main killed -9 leaves its pool processes; gunicorn's
                    # master, its workers holding the port) goes with it, as a container's processes do.
                    _signal_group(proc.popen.pid, signal.SIGKILL)
                    proc.popen = None
                    self.write_state()
                elif proc.popen is None and now >= proc.due:
                    proc.restarts += 1
                    self.start(proc)
            self.stopping.wait(0.2)

    def stop(self) -> None:
        running = [p for p in self.procs if p.popen is not None and p.popen.poll() is None]
        for proc in running:
            self.say("supervise", f"stopping {proc.name} (pid {proc.popen.pid})")  # type: ignore[union-attr]
            _signal_group(proc.popen.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            assert proc.popen is not None
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("supervise", f"{proc.name} still running after {self.stop_timeout:.0f} s: SIGKILL")
                _signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        for proc in self.procs:  # pool processes left behind by a main process killed earlier
            if proc.popen is not None:
                _signal_group(proc.popen.pid, signal.SIGKILL)
        self.write_state()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procfile", default="Procfile", type=Path)
    parser.add_argument("--state", type=Path, default=None)
    parser.add_argument("--stop-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    supervisor = Supervisor(read_procfile(args.procfile), args.state, args.stop_timeout)

    def on_signal(signum: int, _frame: object) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        supervisor.loop()
    finally:
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
