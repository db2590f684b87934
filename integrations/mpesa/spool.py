"""The callback spool: where a Daraja callback goes when PostgreSQL refuses it (docs/mpesa.md,
"When PostgreSQL is down").

Safaricom does not resend a callback answered with an error, so a callback the database cannot take
is written to a local directory (MPESA_SPOOL_DIR), one file per callback, and answered as usual. The
sweeper, `manage.py mpesa_spool_import` and the web process that spooled (once the database answers
it again) import the files into the inbox.

- Writing: the record goes to a temporary name (".tmp-..."), is fsync'd, renamed to its final
  "<nanoseconds>-<pid>-<random>.json" name in the same directory (atomic) and the directory is
  fsync'd. A file with a final name is always complete; a crash mid-write leaves only a temporary
  file, which importers ignore and delete once it is older than TEMP_MAX_AGE seconds.
- Importing a file: take an exclusive flock on it (a second importer skips it; the kernel releases
  the lock of a crashed importer), check the name still points at the locked file, store it in the
  inbox like the view would (idempotent on (kind, Daraja id)), then delete it. A crash between the
  store and the delete imports the file again later, which stores nothing.
- Only callbacks for a till token known to be good are spooled: one this process saw valid, or one
  in KNOWN_TILLS, the SHA-256 of every active till's token, rewritten by each import (the sweeper's,
  every minute) while the database answers. Junk sent to made-up tokens during an outage gets the
  404 it gets with the database up. The spool itself is capped (conf.spool_max_files / _bytes).
- A file whose till token is unknown or inactive at import (the view answers those 404), or that
  cannot be read, is moved to `rejected/` and logged. Each import deletes rejected files older than
  conf.spool_rejected_max_days, then the oldest beyond conf.spool_rejected_max_files.
Nothing here runs on the happy path of a callback.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from django.db import DatabaseError, InterfaceError, OperationalError, connection

from integrations.mpesa import conf

logger = logging.getLogger(__name__)

VERSION = 1
SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
REJECTED = "rejected"
# SHA-256 (hex) of each active till's callback token, one a line: the tokens the view may spool for.
KNOWN_TILLS = "known-tills"
# A temporary file this old belongs to a writer that died (a request is killed after 30 s).
TEMP_MAX_AGE = 60.0
# Daraja's callbacks are a few KB. Bigger bodies, or a nearly full disk, are not spooled (the request
# fails as it would have without a spool), so junk sent while the database is down cannot fill the disk.
MAX_BODY_BYTES = 64 * 1024
MIN_FREE_BYTES = 64 * 1024 * 1024
# What makes a callback go to the spool: the database is unreachable or refuses connections.
DB_DOWN = (OperationalError, InterfaceError)


class SpoolError(Exception):
    """The callback could not be spooled (too big, disk full, directory not writable)."""


@dataclass(frozen=True)
class SpooledCallback:
    token: str
    kind: str
    body: bytes
    headers: dict[str, str]
    remote_addr: str | None
    received_at: dt.datetime
    outcome: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": VERSION,
                "token": self.token,
                "kind": self.kind,
                "received_at": self.received_at.isoformat(),
                "remote_addr": self.remote_addr,
                "headers": self.headers,
                "outcome": self.outcome,
                "body_b64": base64.b64encode(self.body).decode("ascii"),
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SpooledCallback:
        try:
            data = json.loads(raw)
            if data.get("v") != VERSION:
                raise ValueError(f"unknown spool format {data.get('v')!r}")
            received_at = dt.datetime.fromisoformat(data["received_at"])
            if received_at.tzinfo is None:
                raise ValueError("received_at without a time zone")
            return cls(
                token=str(data["token"]),
                kind=str(data["kind"]),
                body=base64.b64decode(data["body_b64"], validate=True),
                headers={str(k): str(v) for k, v in dict(data["headers"]).items()},
                remote_addr=None if data["remote_addr"] is None else str(ipaddress.ip_address(data["remote_addr"])),
                received_at=received_at,
                outcome=str(data.get("outcome", "")),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise ValueError(f"not a spooled callback: {exc!r}") from exc


def spool_dir() -> Path:
    return Path(conf.spool_dir())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_write(
    *,
    token: str,
    kind: str,
    body: bytes,
    headers: Mapping[str, str],
    remote_addr: str | None,
    outcome: str = "",
    directory: Path | None = None,
) -> Path:
    """Write one callback durably to the spool; its final path. SpoolError if it cannot be kept."""
    if len(body) > MAX_BODY_BYTES:
        raise SpoolError(f"body of {len(body)} bytes is too big for the spool")
    root = directory or spool_dir()
    record = SpooledCallback(
        token=token,
        kind=kind,
        body=body,
        headers=dict(headers),
        remote_addr=remote_addr,
        received_at=dt.datetime.now(dt.UTC),
        outcome=outcome,
    )
    payload = record.to_json()
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(6)}"
    temp, final = root / f"{TEMP_PREFIX}{name}", root / f"{name}{SUFFIX}"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        usage = os.statvfs(root)
        if usage.f_bavail * usage.f_frsize < MIN_FREE_BYTES:
            raise SpoolError(f"less than {MIN_FREE_BYTES // 2**20} MiB free in {root}")
        count, size = spool_usage(root)
        if count >= conf.spool_max_files():
            raise SpoolError(f"the spool {root} holds {count} files already (MPESA_SPOOL_MAX_FILES)")
        if size + len(payload) > conf.spool_max_bytes():
            raise SpoolError(f"the spool {root} holds {size} bytes already (MPESA_SPOOL_MAX_BYTES)")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(root)
    except OSError as exc:
        raise SpoolError(f"cannot write to the spool {root}: {exc}") from exc
    _note_spooled()
    return final


def spool_usage(root: Path) -> tuple[int, int]:
    """(files, bytes) of the callbacks in the spool, complete or being written (not rejected/).

    Only called on the outage path; the file cap keeps the listing short.
    """
    count = size = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if entry.name.endswith(SUFFIX) or entry.name.startswith(TEMP_PREFIX):
            try:
                size += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # imported meanwhile
            count += 1
    return count, size


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def known_tills_write(*, directory: Path | None = None) -> int:
    """Write KNOWN_TILLS: the digest of every active till's callback token (atomic replace).

    Called by each import while the database answers, so the view can tell a real till's callback
    from junk when the database is down. How many tokens were written.
    """
    from integrations.mpesa.models import Till

    digests = sorted(
        token_digest(t) for t in Till.objects.filter(is_active=True).values_list("callback_token", flat=True)
    )
    root = directory or spool_dir()
    content = "".join(f"{d}\n" for d in digests)
    try:
        if (root / KNOWN_TILLS).read_text() == content:
            return len(digests)  # unchanged: no write, no fsync (the sweeper calls this every minute)
    except (FileNotFoundError, NotADirectoryError):
        pass
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = root / f"{TEMP_PREFIX}{KNOWN_TILLS}-{secrets.token_hex(6)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, root / KNOWN_TILLS)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return len(digests)


def token_known(token: str, *, directory: Path | None = None) -> bool:
    """Whether `token` was an active till's when KNOWN_TILLS was last written (no database)."""
    try:
        known = ((directory or spool_dir()) / KNOWN_TILLS).read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return token_digest(token) in known


@dataclass
class SpoolImport:
    """What one import did, by file."""

    imported: int = 0  # stored in the inbox
    duplicates: int = 0  # already in the inbox (a crash between store and delete, or stored by the view)
    rejected: int = 0  # moved to rejected/ (unknown or inactive till, unreadable file)
    busy: int = 0  # another importer holds it
    failed: int = 0  # left for the next import (logged)
    cleaned: int = 0  # stale temporary files deleted
    pruned: int = 0  # rejected files deleted (too old, or too many)
    enqueued: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "busy": self.busy,
            "failed": self.failed,
            "cleaned": self.cleaned,
            "pruned": self.pruned,
        }


def spool_pending(directory: Path | None = None) -> int:
    """How many complete callbacks wait in the spool (not counting rejected/)."""
    root = directory or spool_dir()
    try:
        return sum(1 for name in os.listdir(root) if name.endswith(SUFFIX) and not name.startswith("."))
    except FileNotFoundError:
        return 0


def spool_status(directory: Path | None = None) -> dict[str, int | float | None]:
    """What waits in the spool, from the disk alone (it answers while the database is down):
    callbacks pending, files in rejected/, and the age in seconds of the oldest pending one (a file
    minutes old with the database up means the import is failing; the logs say why)."""
    root = directory or spool_dir()
    oldest: float | None = None
    pending = 0
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
            pending += 1
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            oldest = mtime if oldest is None else min(oldest, mtime)
    try:
        rejected = sum(1 for e in os.scandir(root / REJECTED) if e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        rejected = 0
    age = None if oldest is None else round(max(0.0, time.time() - oldest), 1)
    return {"pending": pending, "rejected": rejected, "oldest_pending_seconds": age}


def spool_import(*, directory: Path | None = None) -> SpoolImport:
    """Store every spooled callback in the inbox (oldest first), deleting each file once stored.

    Safe to run at any time, from any number of processes at once. A database error that says the
    database is still down stops the import (raised: the files wait for the next run); new inbox rows
    stored before it are enqueued all the same.
    """
    from integrations.mpesa.publisher import inbox_enqueue

    root = directory or spool_dir()
    result = SpoolImport()
    result.pruned = _prune_rejected(root / REJECTED)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        names = []
    try:
        for name in names:
            path = root / name
            if name.startswith(TEMP_PREFIX):
                result.cleaned += _clean_temp(path)
            elif name.endswith(SUFFIX) and not name.startswith("."):
                outcome = _import_one(path, result)
                setattr(result, outcome, getattr(result, outcome) + 1)
    finally:
        if result.enqueued:
            inbox_enqueue(result.enqueued)  # what the broker does not take, the sweeper sends later
    try:
        known_tills_write(directory=root)
    except OSError:
        logger.exception("could not write %s: callbacks for tills added since are not spooled", root / KNOWN_TILLS)
    if result.imported or result.rejected or result.failed or result.pruned:
        logger.info("spool import from %s: %s", root, result.as_dict())
    return result


def _prune_rejected(rejected: Path) -> int:
    """Delete rejected files older than the configured days, then the oldest beyond the file cap."""
    try:
        entries = [e for e in os.scandir(rejected) if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    dated: list[tuple[float, Path]] = []
    for entry in entries:
        try:
            dated.append((entry.stat(follow_symlinks=False).st_mtime, Path(entry.path)))
        except FileNotFoundError:
            continue
    dated.sort()
    oldest_kept = time.time() - conf.spool_rejected_max_days() * 86400
    excess = max(0, len(dated) - conf.spool_rejected_max_files())
    pruned = 0
    for position, (mtime, path) in enumerate(dated):
        if mtime >= oldest_kept and position >= excess:
            break  # sorted oldest first: the rest are recent enough and within the cap
        path.unlink(missing_ok=True)
        pruned += 1
    if pruned:
        logger.warning("deleted %d rejected spool files from %s (too old or too many)", pruned, rejected)
    return pruned


def _clean_temp(path: Path) -> int:
    try:
        if time.time() - path.stat().st_mtime < TEMP_MAX_AGE:
            return 0  # possibly still being written
        path.unlink()
    except FileNotFoundError:
        return 0
    logger.warning("deleted %s: a spool write that never completed", path)
    return 1


def _import_one(path: Path, result: SpoolImport) -> str:
    """Import one file under its flock; the SpoolImport counter it belongs to."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the unlink, which releases the lock
    except FileNotFoundError:
        return "busy"  # another importer finished it between the listing and now
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "busy"
        try:
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                return "busy"
        except FileNotFoundError:
            return "busy"  # imported and deleted (or rejected) by the importer that held the lock
        try:
            record = SpooledCallback.from_json(fh.read())
        except ValueError as exc:
            _reject(path, f"unreadable: {exc}")
            return "rejected"
        try:
            return _store(path, record, result)
        except DB_DOWN:
            raise
        except DatabaseError:
            logger.exception("spooled %s (%s) could not be stored; left for the next import", path.name, record.kind)
            return "failed"


def _store(path: Path, record: SpooledCallback, result: SpoolImport) -> str:
    from integrations.mpesa.inbox import PAYLOAD_KIND
    from integrations.mpesa.models import InboxState, Till
    from integrations.mpesa.views import callback_store

    if record.kind not in PAYLOAD_KIND:
        _reject(path, f"unknown kind {record.kind!r}")
        return "rejected"
    till = Till.objects.filter(callback_token=record.token, is_active=True).first()
    if till is None:
        _reject(path, "unknown or inactive till token (the view answers 404)")
        return "rejected"
    headers = {**record.headers, "X-Spooled-At": record.received_at.isoformat()}
    inbox_id, state = callback_store(
        till=till,
        kind=record.kind,
        body=record.body,
        headers=headers,
        remote_addr=record.remote_addr,
        outcome=record.outcome,
    )
    if inbox_id is not None and state == InboxState.RECEIVED:
        result.enqueued.append(inbox_id)
    _delete(path)
    return "imported" if inbox_id is not None else "duplicates"


def _delete(path: Path) -> None:
    """Drop an imported file. Losing the unlink to a crash only means storing it again: a no-op."""
    path.unlink()


def _reject(path: Path, why: str) -> None:
    target = path.parent / REJECTED
    target.mkdir(mode=0o700, exist_ok=True)
    os.replace(path, target / path.name)
    logger.error("spooled callback %s moved to %s: %s", path.name, target, why)


# -------------------------------------------------------- import from the web process that spooled

_state_lock = threading.Lock()
_spooled_here = False
_importer: threading.Thread | None = None


def _note_spooled() -> None:
    global _spooled_here
    _spooled_here = True


def import_after_recovery() -> bool:
    """Called after a callback was stored: if this process spooled since its last import, import the
    spool in a background thread (the answer to Daraja does not wait). True if a thread started.

    Costs one boolean test on the happy path. The sweeper does the same every minute; this makes a
    web process that saw the outage import it seconds after PostgreSQL is back, beat or not.
    """
    global _spooled_here, _importer
    if not _spooled_here:
        return False
    with _state_lock:
        if not _spooled_here or (_importer is not None and _importer.is_alive()):
            return False
        _spooled_here = False
        _importer = threading.Thread(target=_import_in_background, name="mpesa-spool-import", daemon=True)
        _importer.start()
    return True


def _import_in_background() -> None:
    try:
        spool_import()
    except Exception:
        logger.exception("spool import after recovery failed; the sweeper will import it")
        _note_spooled()  # try again after the next stored callback
    finally:
        connection.close()  # this thread's own connection
