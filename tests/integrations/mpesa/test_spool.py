"""The callback spool: callbacks the database refuses are kept on disk, answered as usual, and imported
into the inbox exactly once (spool.py; docs/mpesa.md, "When PostgreSQL is down").

"Database down" here is Django's execute_wrapper refusing every query with OperationalError, as a
stopped server does; test_spool_postgres_down.py does it with a real PostgreSQL stopped and started.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import OperationalError, connection
from django.test import Client

from integrations.mpesa import spool, views
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Till
from integrations.mpesa.publisher import publisher
from integrations.mpesa.spool import (
    KNOWN_TILLS,
    REJECTED,
    SpoolError,
    known_tills_write,
    spool_import,
    spool_pending,
    spool_write,
)
from integrations.mpesa.tasks import sweep_inbox
from tests.factories.mpesa import (
    TillFactory,
    c2b_confirmation,
    c2b_validation,
    sample_bytes,
    stk_success,
)
from tests.integrations.mpesa.redis_support import queued_inbox_ids

pytestmark = pytest.mark.django_db

ACK = {"ResultCode": 0, "ResultDesc": "Success"}
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
VALIDATION_OK = {"ResultCode": "0", "ResultDesc": "Accepted"}


def _refuse(*args: Any) -> Any:
    raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')


@contextmanager
def database_down() -> Iterator[None]:
    """Every query of this thread's connection fails as with a stopped PostgreSQL."""
    with connection.execute_wrapper(_refuse):
        yield


def post(till_or_token: Till | str, suffix: str, body: bytes, **extra: Any) -> Any:
    token = till_or_token.callback_token if isinstance(till_or_token, Till) else till_or_token
    response = Client().post(f"/daraja/{token}/{suffix}", data=body, content_type="application/json", **extra)
    assert publisher.flush()
    return response


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.exists() else []


@pytest.fixture
def spool_dir(_spool_dir: Path) -> Path:
    return _spool_dir


@pytest.mark.parametrize("fails_at", ["till lookup", "inbox insert"])
@pytest.mark.parametrize(
    ("suffix", "body", "answer", "kind", "daraja_id"),
    [
        ("c2b/confirm/", c2b_confirmation(trans_id="SPL0000001", shortcode="600966"), ACK, "c2b_confirmation", None),
        ("stk/", stk_success(checkout_id="ws_CO_SPOOL1", receipt="SPL0000002"), ACK, "stk", "ws_CO_SPOOL1"),
        ("result/reversal/", sample_bytes("09_reversal_result_success.json"), ACCEPTED, "result_reversal", None),
    ],
)
def test_a_callback_the_database_refuses_is_spooled_answered_and_imported_once(
    till: Till,
    clean_broker: redis.Redis,
    spool_dir: Path,
    fails_at: str,
    suffix: str,
    body: bytes,
    answer: dict[str, Any],
    kind: str,
    daraja_id: str | None,
) -> None:
    if fails_at == "inbox insert":
        views._till(till.callback_token)  # cached: only the INSERT meets the dead database
    else:
        known_tills_write()  # the sweeper's last run listed the till's token
    with database_down():
        response = post(till, suffix, body, HTTP_X_FORWARDED_FOR="196.201.214.200")

    assert response.status_code == 200 and response.json() == answer
    assert InboxMessage.objects.count() == 0
    [path] = files(spool_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in spool_dir.iterdir() if p.name.startswith(".tmp-")]

    first = spool_import()
    assert (first.imported, first.duplicates, first.rejected) == (1, 0, 0)
    row = InboxMessage.objects.get()
    assert (row.till_id, row.kind, row.state) == (till.pk, kind, InboxState.RECEIVED)
    assert row.body == body.decode()
    assert row.remote_addr == "196.201.214.200"
    assert "X-Spooled-At" in row.headers and row.headers["Content-Type"] == "application/json"
    if daraja_id:
        assert row.daraja_id == daraja_id
    assert queued_inbox_ids(clean_broker) == [row.pk]  # sent to the payments queue like the view's rows
    assert files(spool_dir) == []

    again = spool_import()
    assert (again.imported, again.duplicates, again.rejected) == (0, 0, 0)
    assert InboxMessage.objects.count() == 1


def test_validation_with_the_database_down_is_accepted_and_recorded(till: Till, spool_dir: Path) -> None:
    known_tills_write()
    with database_down():
        response = post(till, "c2b/validate/", c2b_validation(trans_id="SPLVAL0001", shortcode="600966"))

    assert response.status_code == 200 and response.json() == VALIDATION_OK
    assert spool_import().imported == 1
    row = InboxMessage.objects.get()
    assert (row.kind, row.daraja_id, row.state) == (InboxKind.C2B_VALIDATION, "SPLVAL0001", InboxState.PROCESSED)
    assert row.outcome == "accepted unchecked: the database was unavailable"


def test_validation_decided_from_the_cached_till_keeps_its_decision(till: Till, spool_dir: Path) -> None:
    till.max_amount = 1000
    till.save()
    views._till(till.callback_token)
    with database_down():
        response = post(till, "c2b/validate/", c2b_validation(trans_id="SPLVAL0002", shortcode="600966", amount="5000"))

    assert response.json()["ResultCode"] == "C2B00013"
    spool_import()
    assert InboxMessage.objects.get().outcome.startswith("rejected C2B00013")


def test_an_unknown_token_is_not_spooled_while_the_database_is_down(till: Till, spool_dir: Path) -> None:
    """Junk sent to made-up tokens during an outage gets the 404 it gets with the database up, and
    no file: it could otherwise fill the disk and crowd out real callbacks."""
    known_tills_write()
    views._till(till.callback_token)
    with database_down():
        for n in range(5):
            response = post(f"junk{n:04d}", "c2b/confirm/", b"x" * 60_000)
            assert response.status_code == 404
    assert files(spool_dir) == []


def test_a_till_listed_by_the_last_import_is_spooled_by_a_process_that_never_saw_it(
    till: Till, spool_dir: Path
) -> None:
    """A web worker started during the outage knows no token; the list on disk still lets its
    callbacks through. A till deactivated before the list was written is not on it."""
    inactive = TillFactory.create(business=till.business, shortcode="600967", is_active=False)
    assert spool_import().as_dict()["imported"] == 0  # the sweeper's run writes the list
    assert (spool_dir / KNOWN_TILLS).stat().st_mode & 0o777 == 0o600
    assert till.callback_token not in (spool_dir / KNOWN_TILLS).read_text()  # digests, not tokens
    with database_down():
        assert post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL3", receipt="SPL0000004")).status_code == 200
        assert post(inactive, "stk/", stk_success(checkout_id="ws_CO_SPOOL4", receipt="SPL0000044")).status_code == 404
    assert len(files(spool_dir)) == 1


def test_a_token_this_process_saw_valid_is_spooled_without_the_list(till: Till, spool_dir: Path) -> None:
    views._till(till.callback_token)
    views._till_cache.clear()  # long after the 30 s cache: the lookup itself meets the dead database
    with database_down():
        assert post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL7", receipt="SPL0000047")).status_code == 200
    assert not (spool_dir / KNOWN_TILLS).exists()
    assert len(files(spool_dir)) == 1


def test_a_till_deactivated_after_the_list_was_written_is_kept_in_rejected(till: Till, spool_dir: Path) -> None:
    known_tills_write()
    Till.objects.filter(pk=till.pk).update(is_active=False)
    with database_down():
        assert post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL8", receipt="SPL0000048")).status_code == 200

    result = spool_import()

    assert (result.imported, result.rejected) == (0, 1)
    assert InboxMessage.objects.count() == 0
    assert len(files(spool_dir / REJECTED)) == 1
    assert post(till, "stk/", b"{}").status_code == 404  # what the view answers with the database up


def test_a_token_no_till_can_have_is_not_spooled(spool_dir: Path) -> None:
    with database_down():
        assert post("x" * 65, "stk/", b"{}").status_code == 404
    assert not spool_dir.exists()


def test_when_the_spool_cannot_be_written_the_error_stands(till: Till, settings: Any, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    settings.MPESA_SPOOL_DIR = blocked / "spool"  # a directory that cannot be created
    views._till(till.callback_token)
    with database_down(), pytest.raises(OperationalError):
        post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL5", receipt="SPL0000005"))


def test_a_body_too_big_for_the_spool_is_refused(spool_dir: Path) -> None:
    with pytest.raises(SpoolError):
        spool_write(
            token="t", kind="stk_callback", body=b"x" * (spool.MAX_BODY_BYTES + 1), headers={}, remote_addr=None
        )
    assert files(spool_dir) == []


def test_the_spool_takes_no_more_files_than_its_cap(till: Till, spool_dir: Path, settings: Any) -> None:
    settings.MPESA_SPOOL_MAX_FILES = 3
    for n in range(3):
        _spool_one(till, f"SPL000005{n}")
    with pytest.raises(SpoolError, match="MPESA_SPOOL_MAX_FILES"):
        _spool_one(till, "SPL0000053")
    assert len(files(spool_dir)) == 3

    # Through the view: the request fails as it would without a spool (Daraja's error, a 500).
    views._till(till.callback_token)
    with database_down(), pytest.raises(OperationalError):
        post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL9", receipt="SPL0000054"))
    assert len(files(spool_dir)) == 3

    assert spool_import().imported == 3  # room again once imported
    _spool_one(till, "SPL0000055")


def test_the_spool_takes_no_more_bytes_than_its_cap(till: Till, spool_dir: Path, settings: Any) -> None:
    first = _spool_one(till, "SPL0000060")
    settings.MPESA_SPOOL_MAX_BYTES = first.stat().st_size * 2 + 10
    _spool_one(till, "SPL0000061")
    with pytest.raises(SpoolError, match="MPESA_SPOOL_MAX_BYTES"):
        _spool_one(till, "SPL0000062")
    assert len(files(spool_dir)) == 2


def test_rejected_files_are_deleted_when_old_or_too_many(spool_dir: Path, settings: Any) -> None:
    settings.MPESA_SPOOL_REJECTED_MAX_FILES = 3
    settings.MPESA_SPOOL_REJECTED_MAX_DAYS = 30
    rejected = spool_dir / REJECTED
    rejected.mkdir(parents=True)
    now = time.time()
    ages = {"ancient": 31, "old": 20, "older": 25, "recent": 2, "new": 1, "today": 0}
    for name, days in ages.items():
        path = rejected / f"{name}.json"
        path.write_bytes(b"{}")
        os.utime(path, (now - days * 86400, now - days * 86400))

    result = spool_import()

    # ancient is past 30 days; of the five left the two oldest go to keep three.
    assert result.pruned == 3
    assert sorted(p.name for p in rejected.iterdir()) == ["new.json", "recent.json", "today.json"]
    assert spool_import().pruned == 0


def test_the_happy_path_does_not_touch_the_spool(till: Till, spool_dir: Path, monkeypatch: Any) -> None:
    def no_spool(**kwargs: Any) -> Path:
        raise AssertionError("spooled on the happy path")

    monkeypatch.setattr(views, "spool_write", no_spool)
    assert post(till, "stk/", stk_success(checkout_id="ws_CO_SPOOL6", receipt="SPL0000006")).status_code == 200
    assert InboxMessage.objects.count() == 1
    assert not spool_dir.exists()


# ------------------------------------------------------------------------------ spool.py itself


def _spool_one(till: Till, trans_id: str, directory: Path | None = None) -> Path:
    return spool_write(
        token=till.callback_token,
        kind=InboxKind.C2B_CONFIRMATION,
        body=c2b_confirmation(trans_id=trans_id, shortcode=till.shortcode),
        headers={"Content-Type": "application/json"},
        remote_addr="196.201.214.200",
        directory=directory,
    )


def test_a_write_that_dies_before_the_rename_leaves_no_callback(till: Till, spool_dir: Path, monkeypatch: Any) -> None:
    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(spool.os, "rename", crash)
    with pytest.raises(SpoolError):
        _spool_one(till, "SPL0000007")
    assert list(spool_dir.iterdir()) == []  # neither a final file nor the temporary one


def test_temporary_files_are_never_imported_and_stale_ones_are_deleted(till: Till, spool_dir: Path) -> None:
    """A process killed mid-write leaves only a temporary file: complete files have final names."""
    spool_dir.mkdir()
    fresh = spool_dir / ".tmp-00000000000000000001-1-aaaa"
    stale = spool_dir / ".tmp-00000000000000000002-1-bbbb"
    for path in (fresh, stale):
        path.write_bytes(b'{"v": 1, "token": "')  # cut short
    old = time.time() - spool.TEMP_MAX_AGE - 5
    os.utime(stale, (old, old))

    result = spool_import()

    assert (result.imported, result.rejected, result.cleaned) == (0, 0, 1)
    assert fresh.exists() and not stale.exists()
    assert spool_pending() == 0


def test_a_damaged_file_is_kept_in_rejected(till: Till, spool_dir: Path) -> None:
    good = _spool_one(till, "SPL0000008")
    bad = spool_dir / "00000000000000000003-1-cccc.json"
    bad.write_bytes(b"\x00garbage")
    bad_ip = _spool_one(till, "SPL0000009")
    record = json.loads(bad_ip.read_bytes())
    bad_ip.write_text(json.dumps({**record, "remote_addr": "'; DROP TABLE"}))

    result = spool_import()

    assert (result.imported, result.rejected) == (1, 2)
    assert not good.exists()
    assert sorted(p.name for p in files(spool_dir / "rejected")) == sorted([bad.name, bad_ip.name])


def test_a_crash_between_store_and_delete_imports_the_file_again_as_a_no_op(
    till: Till, spool_dir: Path, monkeypatch: Any
) -> None:
    path = _spool_one(till, "SPL0000010")

    def crash(path: Path) -> None:
        raise KeyboardInterrupt  # the process dies here: stored, not deleted

    monkeypatch.setattr(spool, "_delete", crash)
    with pytest.raises(KeyboardInterrupt):
        spool_import()
    assert path.exists() and InboxMessage.objects.count() == 1
    monkeypatch.undo()

    result = spool_import()

    assert (result.imported, result.duplicates) == (0, 1)
    assert not path.exists() and InboxMessage.objects.count() == 1


def test_a_file_locked_by_another_importer_is_left_to_it(till: Till, spool_dir: Path) -> None:
    path = _spool_one(till, "SPL0000011")
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        result = spool_import()
        assert (result.imported, result.busy) == (0, 1)
        assert path.exists() and InboxMessage.objects.count() == 0
    assert spool_import().imported == 1


def test_an_import_while_the_database_is_still_down_keeps_every_file(till: Till, spool_dir: Path) -> None:
    paths = [_spool_one(till, f"SPL000002{n}") for n in range(3)]
    with database_down(), pytest.raises(OperationalError):
        spool_import()
    assert all(p.exists() for p in paths)
    assert spool_import().imported == 3


def test_the_sweeper_and_the_command_import_the_spool(till: Till, spool_dir: Path, clean_broker: redis.Redis) -> None:
    swept = _spool_one(till, "SPL0000030")
    sweep_inbox(min_age_seconds=30)
    assert not swept.exists()
    assert InboxMessage.objects.filter(daraja_id="SPL0000030").exists()

    commanded = _spool_one(till, "SPL0000031")
    out = StringIO()
    call_command("mpesa_spool_import", stdout=out)
    assert not commanded.exists()
    assert "imported 1" in out.getvalue() and "still waiting 0" in out.getvalue()
    assert InboxMessage.objects.count() == 2


# ------------------------------------------------- real concurrency: their own database connections


def _in_thread(target: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        try:
            return target()
        finally:
            connection.close()

    return run


@pytest.mark.django_db(transaction=True)
def test_two_importers_at_once_store_each_callback_once(till: Till, spool_dir: Path) -> None:
    receipts = [f"SPC{n:07d}" for n in range(60)]
    for receipt in receipts:
        _spool_one(till, receipt)
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def importer() -> None:
        barrier.wait()
        try:
            results.append(spool_import())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=_in_thread(importer)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(r.imported for r in results) == len(receipts)
    assert sum(r.duplicates for r in results) == 0
    assert sorted(InboxMessage.objects.values_list("daraja_id", flat=True)) == receipts
    assert files(spool_dir) == []


@pytest.mark.django_db(transaction=True)
def test_the_web_process_that_spooled_imports_after_its_next_stored_callback(till: Till, spool_dir: Path) -> None:
    known_tills_write()
    with database_down():
        assert (
            post(till, "c2b/confirm/", c2b_confirmation(trans_id="SPL0000040", shortcode="600966")).status_code == 200
        )
    assert len(files(spool_dir)) == 1

    assert post(till, "c2b/confirm/", c2b_confirmation(trans_id="SPL0000041", shortcode="600966")).status_code == 200
    importer = spool._importer
    assert importer is not None
    importer.join(30)

    assert sorted(InboxMessage.objects.values_list("daraja_id", flat=True)) == ["SPL0000040", "SPL0000041"]
    assert files(spool_dir) == []
    assert spool._spooled_here is False
