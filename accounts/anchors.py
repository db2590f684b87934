"""Anchors: each business's hash-chain head, signed with a key the database never holds, kept outside it.

The hash chain (migrations/0002_ledger_rules.py) shows any change to a sealed entry, unless whoever made
the change also recomputes the seals from there to the head, or cuts the newest entries off and rewinds
the books' counter: a database superuser can do both, and `verify_ledger` then finds nothing wrong. An
anchor fixes a head in time, outside the database:

    {"v": 1, "business": 3, "number": 42, "hash": "<64 hex>", "at": "2026-01-01T23:00:00Z",
     "source": "beat", "mac": "<64 hex>"}

`number` is the head's entry number, which in an intact chain is also the business's entry count;
`hash` its seal; `at` the writer's clock (UTC); `source` who wrote it (command, beat, backup, email);
`mac` = hex HMAC-SHA256(key, "ledger-anchor|v1|business|number|hash|at|source") with the first of
settings.LEDGER_ANCHOR_KEYS (every key verifies).

Anchors are appended (JSON lines, fsync'd) to LEDGER_ANCHOR_DIR/anchors.jsonl by `manage.py ledger_anchor`
and the hourly `ledger.anchor` task, written beside every dump by the nightly backup (backoffice/backups.py),
and returned by `anchor_lines_current` for the owner's daily e-mail. `verify_ledger` checks every anchor of the file: a
line whose HMAC fails is forged or damaged; a business whose entry no. N no longer has the anchored hash
was re-sealed; one with fewer than N entries was cut off.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.db import connection

ANCHORS_FILE = "anchors.jsonl"
VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

# Each business's head: its highest-numbered entry and that entry's seal (the (business, number) index,
# read backwards: one index probe per business). The backup reads it in its dump's snapshot.
HEADS_SQL = """
SELECT b.business_id, e.number, s.hash
  FROM accounts_books b
 CROSS JOIN LATERAL (SELECT id, number FROM accounts_journalentry
                      WHERE business_id = b.business_id ORDER BY number DESC LIMIT 1) e
  JOIN accounts_entryseal s ON s.entry_id = e.id
 ORDER BY b.business_id
"""

_AT_NUMBERS_SQL = """
SELECT a.business_id, a.number, s.hash
  FROM unnest(%s::bigint[], %s::bigint[]) AS a(business_id, number)
  JOIN accounts_journalentry e ON e.business_id = a.business_id AND e.number = a.number
  LEFT JOIN accounts_entryseal s ON s.entry_id = e.id
"""

_COUNTS_SQL = """
SELECT x.business_id, (SELECT name FROM operations_business WHERE id = x.business_id),
       (SELECT count(*) FROM accounts_journalentry WHERE business_id = x.business_id),
       (SELECT coalesce(max(number), 0) FROM accounts_journalentry WHERE business_id = x.business_id)
  FROM unnest(%s::bigint[]) AS x(business_id)
"""


class AnchorError(Exception):
    """The chain no longer holds a head anchored earlier: the anchor writer refuses to go on from it."""


@dataclass(frozen=True)
class Anchor:
    business_id: int
    number: int
    hash: str
    at: str
    source: str
    mac: str = ""
    line: int = 0  # its line in the file it was read from (1-based); 0 when not read from a file

    def message(self) -> bytes:
        return f"ledger-anchor|v{VERSION}|{self.business_id}|{self.number}|{self.hash}|{self.at}|{self.source}".encode()

    def as_line(self) -> str:
        record = {
            "v": VERSION,
            "business": self.business_id,
            "number": self.number,
            "hash": self.hash,
            "at": self.at,
            "source": self.source,
            "mac": self.mac,
        }
        return json.dumps(record, separators=(",", ":")) + "\n"

    def describe(self) -> str:
        return f"entry no. {self.number} with hash {self.hash} (anchored {self.at} by {self.source})"


def _mac(key: str, anchor: Anchor) -> str:
    return hmac.new(key.encode(), anchor.message(), hashlib.sha256).hexdigest()


def anchor_sign(*, business_id: int, number: int, hash: str, source: str, at: dt.datetime | None = None) -> Anchor:
    """A new anchor, signed with the first LEDGER_ANCHOR_KEY."""
    moment = (at or dt.datetime.now(tz=dt.UTC)).astimezone(dt.UTC)
    unsigned = Anchor(business_id, number, hash, moment.strftime("%Y-%m-%dT%H:%M:%SZ"), source)
    return replace(unsigned, mac=_mac(settings.LEDGER_ANCHOR_KEYS[0], unsigned))


def anchor_parse(text: str, *, line: int = 0) -> Anchor:
    """An anchor line, checked: well formed and signed by one of the keys; ValueError otherwise."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ValueError("not a JSON anchor line") from exc
    if not isinstance(record, dict) or record.get("v") != VERSION:
        raise ValueError("not a version 1 anchor")
    business, number, head, at, source, mac = (
        record.get(name) for name in ("business", "number", "hash", "at", "source", "mac")
    )
    if not (
        type(business) is int
        and business > 0
        and type(number) is int
        and number > 0
        and isinstance(head, str)
        and _HEX64.fullmatch(head)
        and isinstance(at, str)
        and _AT.fullmatch(at)
        and isinstance(source, str)
        and _SOURCE.fullmatch(source)
        and isinstance(mac, str)
    ):
        raise ValueError("a field is missing or malformed")
    anchor = Anchor(business, number, head, at, source, mac, line)
    if not any(hmac.compare_digest(_mac(key, anchor), mac) for key in settings.LEDGER_ANCHOR_KEYS):
        raise ValueError("its HMAC does not verify: not written with LEDGER_ANCHOR_KEY")
    return anchor


@dataclass
class AnchorFile:
    path: Path
    exists: bool = False
    anchors: list[Anchor] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)  # "line N: why"
    torn: bool = False  # the last line is cut short (a crash while it was written): a warning only


def anchors_read(path: Path) -> AnchorFile:
    """Every line of an anchors file, the valid anchors apart from the rest."""
    result = AnchorFile(path=path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return result
    result.exists = True
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            result.anchors.append(anchor_parse(raw.decode("utf-8"), line=number))
        except (ValueError, UnicodeDecodeError) as exc:
            if number == len(lines) and not _looks_complete(raw):
                result.torn = True  # no newline after it and not even JSON: an interrupted append
            else:
                result.forged.append(f"line {number}: forged or damaged: {exc}")
    return result


def _looks_complete(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def anchors_path(path: Path | str | None = None) -> Path:
    return Path(path) if path else Path(settings.LEDGER_ANCHOR_DIR) / ANCHORS_FILE


def ledger_heads() -> list[tuple[int, int, str]]:
    """(business id, head number, head hash) of every business with entries, in one snapshot."""
    with connection.cursor() as cursor:
        cursor.execute(HEADS_SQL)
        return [(int(b), int(n), str(h)) for b, n, h in cursor.fetchall()]


def anchor_lines_current(*, source: str = "email") -> list[str]:
    """Signed anchor lines of the current heads, written nowhere: for the owner's daily e-mail.

    Pasted into a file, they are checked like any other: `verify_ledger --anchors that-file`.
    """
    return [anchor_sign(business_id=b, number=n, hash=h, source=source).as_line() for b, n, h in ledger_heads()]


def _hashes_at(pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str | None]:
    """The seal now at each (business, number); absent when there is no such entry."""
    if not pairs:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_AT_NUMBERS_SQL, [[b for b, _ in pairs], [n for _, n in pairs]])
        return {(int(b), int(n)): h for b, n, h in cursor.fetchall()}


def _counts(business_ids: Sequence[int]) -> dict[int, tuple[str, int, int]]:
    """name (or ""), entry count and last number of each business."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS_SQL, [list(business_ids)])
        return {int(b): (name or "", int(count), int(last)) for b, name, count, last in cursor.fetchall()}


def _mismatch(anchor: Anchor, now: str | None, counts: tuple[str, int, int]) -> str | None:
    """Why the database no longer agrees with `anchor`, or None."""
    _name, count, last = counts
    if now is not None and now == anchor.hash:
        return None
    if count < anchor.number or last < anchor.number:
        return (
            f"cut off: anchored {anchor.describe()}, but the database has {count} entries "
            f"(the last is no. {last}): entries were removed and the counter rewound"
        )
    if now is None:
        return f"anchored {anchor.describe()}, but the database has no sealed entry no. {anchor.number}"
    return (
        f"re-sealed: anchored {anchor.describe()}, but the database's entry no. {anchor.number} now has hash "
        f"{now}: the chain was rewritten after the anchor"
    )


@dataclass
class AnchorCheck:
    file: AnchorFile
    checked: int = 0  # distinct anchored heads compared
    failures: dict[int, list[str]] = field(default_factory=dict)  # business id -> what is wrong
    names: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.file.forged


def anchors_check(*, path: Path | str | None = None, business_ids: Sequence[int] | None = None) -> AnchorCheck:
    """Compare the database with every valid anchor of the file (LEDGER_ANCHOR_DIR's by default).

    Each business is reported once: its earliest anchor the database no longer holds (the tampering
    started after the anchor before it), how many later ones fail too, and the last that still holds.
    """
    result = AnchorCheck(file=anchors_read(anchors_path(path)))
    wanted = set(business_ids) if business_ids is not None else None
    heads: dict[tuple[int, int, str], Anchor] = {}
    for anchor in result.file.anchors:
        if wanted is None or anchor.business_id in wanted:
            heads.setdefault((anchor.business_id, anchor.number, anchor.hash), anchor)
    result.checked = len(heads)
    if not heads:
        return result
    now = _hashes_at(sorted({(b, n) for b, n, _ in heads}))
    counts = _counts(sorted({b for b, _, _ in heads}))
    by_business: dict[int, list[Anchor]] = {}
    for anchor in sorted(heads.values(), key=lambda a: (a.business_id, a.number, a.line)):
        by_business.setdefault(anchor.business_id, []).append(anchor)
    for business_id, anchors in by_business.items():
        name, count, last = counts.get(business_id, ("", 0, 0))
        result.names[business_id] = name or "no longer in the database"
        problems = [
            (a, why)
            for a in anchors
            if (why := _mismatch(a, now.get((a.business_id, a.number)), (name, count, last))) is not None
        ]
        if not problems:
            continue
        first, why = problems[0]
        failing = {a for a, _why in problems}
        held = [a for a in anchors if a.number < first.number and a not in failing]
        details = [why]
        if len(problems) > 1:
            details.append(f"{len(problems) - 1} later anchor(s) of this business fail too")
        if held:
            details.append(f"the last anchor that still holds is entry no. {held[-1].number} ({held[-1].at})")
        result.failures[business_id] = details
    return result


@dataclass
class AnchorRun:
    path: Path
    written: list[Anchor] = field(default_factory=list)
    unchanged: int = 0
    refused: list[str] = field(default_factory=list)


def anchor_write(*, path: Path | str | None = None, source: str = "command") -> AnchorRun:
    """Append a signed anchor for every business whose head moved since its last anchor, and fsync.

    Only appends (O_APPEND, under an exclusive lock, so the task and the command never interleave).
    A business whose chain no longer holds its last anchor is not anchored again: that would sign the
    tampered chain as a new starting point. It is named in `refused` (the command exits 1, the task fails).
    """
    target = anchors_path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = AnchorRun(path=target)
    created = not target.exists()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last: dict[int, Anchor] = {}
        for anchor in anchors_read(target).anchors:
            last[anchor.business_id] = anchor
        heads = {b: (n, h) for b, n, h in ledger_heads()}
        held = _hashes_at(sorted((a.business_id, a.number) for a in last.values()))
        counts = _counts(sorted(last)) if last else {}
        lines: list[str] = []
        for business_id in sorted(set(heads) | set(last)):
            previous = last.get(business_id)
            if previous is not None:
                why = _mismatch(previous, held.get((business_id, previous.number)), counts[business_id])
                if why is not None:
                    result.refused.append(f"business {business_id}: {why}")
                    continue
                if heads.get(business_id) == (previous.number, previous.hash):
                    result.unchanged += 1
                    continue
            number, head = heads[business_id]
            anchor = anchor_sign(business_id=business_id, number=number, hash=head, source=source)
            result.written.append(anchor)
            lines.append(anchor.as_line())
        if lines:
            prefix = "" if _ends_with_newline(fd) else "\n"  # after a torn line, start a fresh one
            os.write(fd, (prefix + "".join(lines)).encode())
            os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(target.parent)
    return result


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def _fsync_dir(directory: Path) -> None:
    """Make the new file's directory entry durable too."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
