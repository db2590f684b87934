"""Anchors: the chain heads kept outside the database catch what a database superuser can do to the chain.

A superuser can re-seal the chain from a tampered entry to the head, or cut the newest entries off and
rewind the books' counter, and the chain itself still verifies (the hole these anchors close). Every
superuser act here goes through `superuser_tamper()`: the one place to point at an owner/superuser
connection once the test suite runs as a plain application role.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.migrations.recorder import MigrationRecorder
from django_celery_beat.models import PeriodicTask

from accounts.anchors import ANCHORS_FILE, anchor_lines_current, anchors_check, anchors_read
from accounts.models import EntrySeal, JournalEntry
from accounts.tasks import anchor_heads
from celeryconf.app import app as celery_app
from tests.conftest import DbRoles
from tests.factories.accounts import sale

pytestmark = pytest.mark.django_db(transaction=True)


_superuser: dict[str, tuple[str, str]] = {}


@pytest.fixture(autouse=True)
def _superuser_login(db_roles: DbRoles) -> None:
    """The tests run as the application role; tampering needs the superuser's login (tests/conftest.py)."""
    _superuser["login"] = db_roles.superuser


@contextmanager
def superuser_tamper() -> Iterator[Any]:
    """A cursor that acts as a database superuser behind the ledger's back: its own connection (autocommit),
    triggers off for the session.

    The only superuser use in these tests (the code under test never needs it).
    """
    user, password = _superuser["login"]
    params = {**connection.settings_dict, "USER": user, "PASSWORD": password, "CONN_MAX_AGE": 0}
    superuser = type(connections[DEFAULT_DB_ALIAS])(params, "superuser")
    try:
        with superuser.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
            yield cursor
    finally:
        superuser.close()


def _rebuild_daily_totals(cursor: Any, business_id: int) -> None:
    """What a careful superuser does after changing lines: make the daily totals agree (so --totals passes)."""
    cursor.execute("DELETE FROM accounts_accountdaytotal WHERE business_id = %s", [business_id])
    cursor.execute(
        """
        INSERT INTO accounts_accountdaytotal (account_id, day, business_id, debit, credit, line_count)
        SELECT l.account_id, e.entry_date, e.business_id, sum(l.debit), sum(l.credit), count(*)
          FROM accounts_journalline l JOIN accounts_journalentry e ON e.id = l.entry_id
         WHERE e.business_id = %s
         GROUP BY l.account_id, e.entry_date, e.business_id
        """,
        [business_id],
    )


def reseal_from(entry: JournalEntry) -> None:
    """Tamper with `entry` (money moved between its lines, still balanced) and recompute every seal from
    it to the head with the ledger's own functions: the chain is consistent again."""
    with superuser_tamper() as cursor:
        cursor.execute(
            "UPDATE accounts_journalline SET debit = debit + 100 WHERE entry_id = %s AND debit > 0", [entry.pk]
        )
        cursor.execute(
            "UPDATE accounts_journalline SET credit = credit + 100 WHERE id = "
            "(SELECT min(id) FROM accounts_journalline WHERE entry_id = %s AND credit > 0)",
            [entry.pk],
        )
        cursor.execute(
            "SELECT number FROM accounts_journalentry WHERE business_id = %s AND number >= %s ORDER BY number",
            [entry.business_id, entry.number],
        )
        for (number,) in cursor.fetchall():
            cursor.execute(
                """
                UPDATE accounts_entryseal s
                   SET hash = ledger_hash(
                         CASE WHEN e.number = 1 THEN ledger_genesis_hash() ELSE
                           (SELECT ps.hash FROM accounts_journalentry p JOIN accounts_entryseal ps
                                ON ps.entry_id = p.id
                             WHERE p.business_id = e.business_id AND p.number = e.number - 1) END,
                         ledger_entry_canon(e.business_id, e.number, e.entry_date, e.posted_at, e.currency,
                                            e.source_type, e.source_ref, e.idempotency_key, e.reverses_id,
                                            e.created_by_id, e.memo),
                         (SELECT string_agg(ledger_line_canon(account_id, debit, credit, memo), E'\\n'
                                            ORDER BY id)
                            FROM accounts_journalline WHERE entry_id = e.id))
                  FROM accounts_journalentry e
                 WHERE s.entry_id = e.id AND e.business_id = %s AND e.number = %s
                """,
                [entry.business_id, number],
            )
        _rebuild_daily_totals(cursor, entry.business_id)


def cut_off(entries: list[JournalEntry]) -> None:
    """Delete the newest `entries` of one business and rewind its books' counter to match."""
    business_id = entries[0].business_id
    ids = [e.pk for e in entries]
    with superuser_tamper() as cursor:
        cursor.execute("DELETE FROM accounts_entryseal WHERE entry_id = ANY(%s)", [ids])
        cursor.execute("DELETE FROM accounts_journalline WHERE entry_id = ANY(%s)", [ids])
        cursor.execute("DELETE FROM accounts_journalentry WHERE id = ANY(%s)", [ids])
        cursor.execute(
            "UPDATE accounts_books SET last_number = last_number - %s WHERE business_id = %s",
            [len(ids), business_id],
        )
        _rebuild_daily_totals(cursor, business_id)


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=out)
    return out.getvalue()


def anchors_file(settings: Any) -> Path:
    return Path(settings.LEDGER_ANCHOR_DIR) / ANCHORS_FILE


def test_a_resealed_chain_passes_the_chain_check_but_not_the_anchors(water, laundry, settings, tmp_path):
    # Given books anchored outside the database
    entries = [sale(water) for _ in range(5)]
    sale(laundry)
    run("ledger_anchor")
    assert "Ledger verified" in run("verify_ledger", "--totals")
    # When a superuser moves money inside entry no. 3 and re-seals from there to the head
    reseal_from(entries[2])
    # Then the chain on its own still verifies (the hole), against an empty anchors file too
    (tmp_path / "empty.jsonl").write_text("")
    assert "Ledger verified" in run("verify_ledger", "--totals", "--anchors", str(tmp_path / "empty.jsonl"))
    # But against the anchors it fails, naming the business, the anchored head and the hash it now has
    with pytest.raises(CommandError) as excinfo:
        run("verify_ledger", "--totals")
    assert excinfo.value.returncode == 1
    message = str(excinfo.value)
    anchored = EntrySeal.objects.get(entry=entries[4]).hash  # re-sealed: not what was anchored
    assert f"business {water.pk} (Maji Safi Water)" in message
    assert "re-sealed" in message and "entry no. 5 with hash" in message
    assert f"now has hash {anchored}" in message
    report = anchors_check()
    assert list(report.failures) == [water.pk]  # the laundry's chain still holds its anchor


def test_an_anchor_from_before_the_tampering_names_where_it_started(water, settings):
    entries = [sale(water)]
    run("ledger_anchor")  # no. 1
    entries += [sale(water), sale(water)]
    run("ledger_anchor")  # no. 3
    entries += [sale(water)]
    run("ledger_anchor")  # no. 4
    reseal_from(entries[2])  # no. 3 onwards
    report = anchors_check()
    details = report.failures[water.pk]
    assert "entry no. 3 with hash" in details[0]
    assert "1 later anchor(s)" in details[1]
    assert "the last anchor that still holds is entry no. 1" in details[2]


def test_cut_off_entries_with_the_counter_rewound_fail_as_cut_off(water, laundry, settings, tmp_path):
    entries = [sale(water) for _ in range(5)]
    sale(laundry)
    run("ledger_anchor")
    # A superuser deletes the two newest entries and rewinds books.last_number: the chain still verifies
    cut_off(entries[3:])
    (tmp_path / "empty.jsonl").write_text("")
    assert "Ledger verified" in run("verify_ledger", "--totals", "--anchors", str(tmp_path / "empty.jsonl"))
    with pytest.raises(CommandError) as excinfo:
        run("verify_ledger")
    message = str(excinfo.value)
    assert f"business {water.pk} (Maji Safi Water)" in message
    assert "cut off: anchored entry no. 5" in message and "the database has 3 entries" in message


def test_a_forged_anchor_line_is_reported(water, settings):
    sale(water)
    run("ledger_anchor")
    path = anchors_file(settings)
    # Someone without the key rewrites the anchored hash to match a chain of their own
    record = json.loads(path.read_text())
    record["hash"] = "b" * 64
    path.write_text(path.read_text() + json.dumps(record) + "\n")
    with pytest.raises(CommandError) as excinfo:
        run("verify_ledger")
    assert excinfo.value.returncode == 1
    assert "Forged anchor" in str(excinfo.value) and "line 2" in str(excinfo.value)
    assert "HMAC does not verify" in str(excinfo.value)
    # the genuine line still counts; the forged one is never compared
    assert anchors_check().checked == 1


def test_an_anchor_signed_with_another_key_is_forged(water, settings):
    sale(water)
    settings.LEDGER_ANCHOR_KEYS = ["another-key-" + "x" * 40]
    run("ledger_anchor")
    settings.LEDGER_ANCHOR_KEYS = ["the-real-key-" + "y" * 40]
    check = anchors_check()
    assert not check.ok and check.file.forged and check.checked == 0
    # rotation: the new key first, the old one kept to verify
    settings.LEDGER_ANCHOR_KEYS = ["the-real-key-" + "y" * 40, "another-key-" + "x" * 40]
    assert anchors_check().ok


def test_the_anchor_command_only_appends_and_skips_unchanged_heads(water, laundry, settings):
    sale(water)
    sale(laundry)
    assert "2 anchor(s) written" in run("ledger_anchor")
    path = anchors_file(settings)
    first = path.read_bytes()
    assert "0 anchor(s) written, 2 head(s) unchanged" in run("ledger_anchor")
    assert path.read_bytes() == first
    sale(water)
    assert "1 anchor(s) written, 1 head(s) unchanged" in run("ledger_anchor")
    after = path.read_bytes()
    assert after.startswith(first) and after.count(b"\n") == 3
    lines = anchors_read(path).anchors
    assert [(a.business_id, a.number) for a in lines] == [(water.pk, 1), (laundry.pk, 1), (water.pk, 2)]
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_a_torn_last_line_is_a_warning_and_the_next_anchor_starts_a_new_line(water, settings):
    sale(water)
    run("ledger_anchor")
    path = anchors_file(settings)
    with path.open("a") as handle:
        handle.write('{"v":1,"business":')  # a crash in the middle of an append
    assert "cut short" in run("verify_ledger")
    sale(water)
    run("ledger_anchor")
    assert [a.number for a in anchors_read(path).anchors] == [1, 2]


def test_the_anchor_writer_refuses_to_sign_a_tampered_chain(water, settings):
    entries = [sale(water) for _ in range(3)]
    run("ledger_anchor")
    reseal_from(entries[1])
    sale(water)
    before = anchors_file(settings).read_bytes()
    with pytest.raises(CommandError):
        run("ledger_anchor")
    assert anchors_file(settings).read_bytes() == before  # the tampered head was not blessed


def test_a_missing_anchors_file_is_a_warning_not_a_failure(water, settings):
    sale(water)
    output = run("verify_ledger")
    assert "Ledger verified" in output and "no file at" in output


def test_an_explicit_anchors_file_that_does_not_exist_fails(water, tmp_path):
    with pytest.raises(CommandError, match="No anchors file"):
        run("verify_ledger", "--anchors", str(tmp_path / "typo.jsonl"))


def test_anchors_of_a_business_that_lost_every_entry_fail(water, settings):
    entries = [sale(water) for _ in range(2)]
    run("ledger_anchor")
    cut_off(entries)
    with pytest.raises(CommandError, match=r"cut off: anchored entry no\. 2"):
        run("verify_ledger")


def test_the_business_option_limits_the_anchor_check(water, laundry, settings):
    entries = [sale(water) for _ in range(2)]
    sale(laundry)
    run("ledger_anchor")
    cut_off(entries[1:])
    assert "Ledger verified" in run("verify_ledger", "--business", str(laundry.pk))
    with pytest.raises(CommandError):
        run("verify_ledger", "--business", str(water.pk))


def test_the_owner_email_lines_are_signed_anchors_of_the_current_heads(water, laundry, settings, tmp_path):
    sale(water)
    sale(laundry)
    sale(laundry)
    lines = anchor_lines_current()
    assert len(lines) == 2 and all(line.endswith("\n") for line in lines)
    pasted = tmp_path / "from-email.jsonl"
    pasted.write_text("".join(lines))
    assert [(a.business_id, a.number, a.source) for a in anchors_read(pasted).anchors] == [
        (water.pk, 1, "email"),
        (laundry.pk, 2, "email"),
    ]
    assert not anchors_file(settings).exists()  # written nowhere
    assert "Ledger verified" in run("verify_ledger", "--anchors", str(pasted))


def test_the_anchor_task_writes_like_the_command(water, settings):
    sale(water)
    anchor_heads.run()
    anchor_heads.run()
    assert [a.source for a in anchors_read(anchors_file(settings)).anchors] == ["beat"]


def test_the_hourly_schedule_exists_after_migrate_on_the_default_queue():
    """The data migration's schedule (created again here: transactional tests empty the tables)."""
    assert ("accounts", "0005_anchors") in MigrationRecorder(connection).applied_migrations()
    migration = importlib.import_module("accounts.migrations.0005_anchors")
    migration.create(apps, None)
    migration.create(apps, None)  # idempotent
    task = PeriodicTask.objects.get(task="ledger.anchor")
    assert task.enabled and task.queue == "default"
    assert (task.interval.every, task.interval.period) == (1, "hours")
    assert "ledger.anchor" in celery_app.tasks
    route = celery_app.amqp.router.route({}, "ledger.anchor")
    assert route["queue"].name == "default"


# The anchors written beside every dump: tests/backoffice/test_backups.py.


# The key: required in production, like DJANGO_SECRET_KEY.


def settings_in_a_new_process(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in {"LEDGER_ANCHOR_KEY", "MPESA_ENCRYPTION_KEY"}}
    environ.update({"DJANGO_SETTINGS_MODULE": "backoffice.settings", "DJANGO_ENV_FILE": "", **env})
    code = "import django; django.setup(); from django.conf import settings; print(settings.LEDGER_ANCHOR_KEYS)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=False)
def test_production_refuses_to_start_without_an_anchor_key():
    production = {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "a-production-secret-key-for-this-test",
        "MPESA_ENCRYPTION_KEY": "Y29sbGVjdHN0YXRpYy1idWlsZC1vbmx5LXVudXNlZCE=",
    }
    result = settings_in_a_new_process(**production)
    assert result.returncode != 0 and "LEDGER_ANCHOR_KEY must be set" in result.stderr
    result = settings_in_a_new_process(**production, LEDGER_ANCHOR_KEY="too-short")
    assert result.returncode != 0 and "at least 32 characters" in result.stderr
    assert "too-short" not in result.stderr
    key = "k" * 32
    result = settings_in_a_new_process(**production, LEDGER_ANCHOR_KEY=f" {key} , {'o' * 40} ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([key, "o" * 40])
    # development derives one from the secret key
    result = settings_in_a_new_process(DJANGO_DEBUG="1")
    assert result.returncode == 0 and "dev-" in result.stdout
