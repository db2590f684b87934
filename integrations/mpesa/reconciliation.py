"""Reconciliation of the M-Pesa org-portal statement against the books, receipt by receipt.

The statement (CSV or XLSX export of the M-Pesa organisation portal) has description lines above
its header row ("Receipt No.,Completion Time,..."), one row per transaction with "Paid In" or
"Withdrawn", charges as separate rows ("... Charge") linked to the payment they belong to, and
statuses Completed / Failed / Cancelled / Declined / Attempted. Receipt No. = TransID =
MpesaReceiptNumber, so each completed payment row meets its Payment row on the receipt:

- matched: in both with the same amount;
- missing_in_books: in the statement only (a person can post it: `reconciliation_post_missing`);
- missing_in_statement: a payment of the till in the statement's period that the statement lacks;
- amount_mismatch: in both with different amounts;
- charge: posted at once, Dr M-Pesa charges / Cr M-Pesa clearing, key "mpesa-charge:<receipt>".

A run is a job ("payments.reconcile", reports queue), launched from the admin; running it again
recomputes its lines (charges are idempotent in the ledger).

The description lines above the header name the organisation and its shortcode: a statement of
another till is refused (its receipts would be posted into the wrong till and books). When they
carry the opening and closing balances, the statement's movement is compared with the books' and
the difference recorded on the run: money that left the till outside the back office (a
settlement to the bank, a withdrawal) shows there. Charges are posted each in a short transaction
of its own and the lines are written in one that posts nothing, so a run never holds the books
(whose row lock every M-Pesa posting of the business takes) for long.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import JournalEntry, JournalLine, SourceType
from accounts.selectors import account_for_role
from accounts.services import LineSpec, entry_post
from integrations.mpesa.exceptions import InvalidRequest
from integrations.mpesa.models import (
    LineStatus,
    Payment,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationState,
    Till,
)
from integrations.mpesa.payloads import MAX_AMOUNT, NAIROBI, RECEIPT_MAX_LENGTH
from integrations.mpesa.payments import payment_record, post_once
from integrations.mpesa.status_queries import split_party
from jobs.registry import JobContext, JobFailed, job_kind

RECONCILE_JOB = "payments.reconcile"
HEADER_FIRST_CELL = "receipt no"
DATE_FORMATS = (
    "%d-%m-%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%d-%m-%Y %H:%M",
    "%d/%m/%Y %H:%M",
    "%Y-%m-%d %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d-%b-%Y %H:%M:%S",
    "%d %b %Y %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%d-%m-%Y",
    "%d/%m/%Y",
    "%Y-%m-%d",
)
_COLUMNS = {
    "receipt no.": "receipt",
    "receipt no": "receipt",
    "completion time": "completed",
    "initiation time": "initiated",
    "details": "details",
    "transaction status": "status",
    "paid in": "paid_in",
    "withdrawn": "withdrawn",
    "balance": "balance",
    "reason type": "reason_type",
    "other party info": "other_party",
    "linked transaction id": "linked",
    "a/c no.": "account_no",
    "a/c no": "account_no",
}
# M-Pesa began in 2007: a time outside these years is a misread cell (and year 1 in Nairobi time is
# before year 1 in UTC, which PostgreSQL stores but Python cannot read back).
FIRST_YEAR, LAST_YEAR = 2000, 2099
CENT = Decimal("0.01")


class StatementError(ValueError):
    """The file is not an org-portal statement we can read; the message says where."""


class StatementOfAnotherTillError(StatementError):
    """The statement names a shortcode that is not the run's till's."""


@dataclass(frozen=True)
class StatementHeader:
    """What the description lines above the column header say (blank / None when absent)."""

    shortcode: str = ""
    organisation: str = ""
    opening_balance: Decimal | None = None
    closing_balance: Decimal | None = None


_SHORTCODE_KEY = re.compile(r"short ?code|till (number|no)|pay ?bill|store (number|no)|business (number|no)")
_ORGANISATION_KEY = re.compile(r"organi[sz]ation|account holder|account name|business name")
_NUMBER = re.compile(r"\b[0-9]{5,8}\b")


@dataclass(frozen=True)
class StatementRow:
    receipt: str
    completed_at: dt.datetime | None
    details: str
    status: str
    paid_in: Decimal
    withdrawn: Decimal
    reason_type: str
    other_party: str
    linked: str
    account_no: str

    @property
    def is_charge(self) -> bool:
        return "charge" in f"{self.details} {self.reason_type}".lower()

    @property
    def completed(self) -> bool:
        return self.status.strip().lower() == "completed"


def parse_when(value: Any) -> dt.datetime | None:
    """A statement time in any of the portal's formats (or an Excel date cell), in Nairobi time."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=NAIROBI)
    elif isinstance(value, dt.date):
        when = dt.datetime.combine(value, dt.time(), tzinfo=NAIROBI)
    else:
        text = str(value).strip()
        for fmt in DATE_FORMATS:
            try:
                when = dt.datetime.strptime(text, fmt).replace(tzinfo=NAIROBI)
                break
            except ValueError:
                continue
        else:
            raise StatementError(f"unrecognised date {text[:40]!r}")
    if not FIRST_YEAR <= when.year <= LAST_YEAR:
        raise StatementError(f"date {when.date().isoformat()} is not of an M-Pesa statement")
    return when


def parse_amount(value: Any) -> Decimal:
    """ "1,200.00", "-5.00", 500.0 or "" -> a non-negative Decimal (withdrawals come negative)."""
    if value in (None, ""):
        return Decimal("0.00")
    text = str(value).strip().replace(",", "").replace("KES", "").strip()
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise StatementError(f"unrecognised amount {text[:40]!r}") from exc
    # NaN, Infinity and amounts no money column holds (they used to crash the run that followed).
    if not amount.is_finite() or abs(amount) > MAX_AMOUNT:
        raise StatementError(f"unrecognised amount {text[:40]!r}")
    return abs(amount).quantize(CENT)


def _rows_of(content: bytes, filename: str) -> list[list[Any]]:
    if filename.lower().endswith((".xlsx", ".xlsm")) or content[:2] == b"PK":
        from openpyxl import load_workbook

        # A read-only workbook parses its sheets while they are iterated: a damaged one fails there.
        try:
            book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
            try:
                return [list(row) for row in book.worksheets[0].iter_rows(values_only=True)]
            finally:
                book.close()
        except Exception as exc:
            raise StatementError(f"not a readable XLSX file: {str(exc)[:200]}") from exc
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = content.decode("latin-1")
    if "\x00" in text:  # no column holds one (PostgreSQL text cannot); a UTF-16 file has them everywhere
        raise StatementError("the file holds NUL characters: not a CSV statement (save it as CSV, UTF-8)")
    try:
        return list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:  # a field over csv.field_size_limit(), a malformed quote
        raise StatementError(f"not a readable CSV file: {exc}") from exc


def _header_at(rows: list[list[Any]]) -> int:
    header_at = next(
        (
            n
            for n, row in enumerate(rows)
            if row and str(row[0] or "").strip().lower().rstrip(".").startswith(HEADER_FIRST_CELL)
        ),
        None,
    )
    if header_at is None:
        raise StatementError("no header row starting with 'Receipt No.' was found")
    return header_at


def _key_value(row: list[Any]) -> tuple[str, str]:
    """("short code", "600966") from ["Short Code:", "600966"] or ["Short Code: 600966"]."""
    cells = [str(cell).strip() for cell in row if cell not in (None, "") and str(cell).strip()]
    if not cells:
        return "", ""
    key, _, rest = cells[0].partition(":")
    value = rest.strip() or (cells[1] if len(cells) > 1 else "")
    return key.strip().lower().rstrip("."), value


def _balance(value: str) -> Decimal | None:
    """A balance named above the header; None when it is not one a money column holds."""
    text = value.replace(",", "").replace("KES", "").replace("Ksh", "").strip()
    try:
        balance = Decimal(text)
    except InvalidOperation:
        return None
    if not balance.is_finite() or abs(balance) > MAX_AMOUNT:
        return None
    return balance.quantize(CENT)


def parse_statement_header(content: bytes, filename: str = "statement.csv") -> StatementHeader:
    """The organisation, shortcode and opening / closing balances named above the column header."""
    rows = _rows_of(content, filename)
    shortcode = organisation = ""
    opening = closing = None
    for row in rows[: _header_at(rows)]:
        key, value = _key_value(row)
        if not key or not value:
            continue
        if "opening balance" in key:
            opening = _balance(value)
        elif "closing balance" in key:
            closing = _balance(value)
        elif _SHORTCODE_KEY.search(key) and not shortcode:
            found = _NUMBER.search(value)
            shortcode = found.group() if found else ""
        elif _ORGANISATION_KEY.search(key) and not organisation:
            party, name = split_party(value)  # "600966 - Maji Safi" or just "Maji Safi"
            if name and _NUMBER.fullmatch(party):
                shortcode = shortcode or party
                organisation = name
            else:
                organisation = value
    return StatementHeader(shortcode, organisation[:120], opening, closing)


def parse_statement(content: bytes, filename: str = "statement.csv") -> list[StatementRow]:
    """Rows of an org-portal statement (CSV or XLSX), skipping the description lines above the header."""
    rows = _rows_of(content, filename)
    header_at = _header_at(rows)
    names = [_COLUMNS.get(str(cell or "").strip().lower(), "") for cell in rows[header_at]]
    labels = {"receipt": "Receipt No.", "completed": "Completion Time", "paid_in": "Paid In", "withdrawn": "Withdrawn"}
    for needed, label in labels.items():
        if needed not in names:
            raise StatementError(f"the header has no {label!r} column")
    parsed = []
    for number, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        values = {name: row[i] if i < len(row) else None for i, name in enumerate(names) if name}
        receipt = str(values.get("receipt") or "").strip()
        if not receipt:
            continue
        # Not longer than the parser's receipts: a line may become a Payment (receipt column).
        if not re.fullmatch(rf"[A-Za-z0-9]{{6,{RECEIPT_MAX_LENGTH}}}", receipt):
            raise StatementError(f"line {number}: {receipt!r} is not a receipt number")
        try:
            parsed.append(
                StatementRow(
                    receipt=receipt,
                    completed_at=parse_when(values.get("completed")),
                    details=str(values.get("details") or "").strip(),
                    status=str(values.get("status") or "Completed").strip(),
                    paid_in=parse_amount(values.get("paid_in")),
                    withdrawn=parse_amount(values.get("withdrawn")),
                    reason_type=str(values.get("reason_type") or "").strip(),
                    other_party=str(values.get("other_party") or "").strip(),
                    linked=str(values.get("linked") or "").strip(),
                    account_no=str(values.get("account_no") or "").strip(),
                )
            )
        except StatementError as exc:
            raise StatementError(f"line {number}: {exc}") from exc
    return parsed


def _charge_key(receipt: str) -> str:
    return f"mpesa-charge:{receipt}"


def _charges_posted(run: ReconciliationRun, rows: list[StatementRow]) -> dict[str, JournalEntry]:
    """The statement's charges already in the books (a run of this or another statement), by receipt.

    A charge posted with another amount refuses the statement here, before anything is posted. (Posted
    again, it would be an idempotency conflict after the charges before it were posted; and one posted
    before its day was closed is found here, not posted again on the first open day.)"""
    charges: dict[str, StatementRow] = {}
    for row in rows:
        if row.completed and row.is_charge and row.withdrawn > 0:
            charges.setdefault(_charge_key(row.receipt), row)
    posted: dict[str, JournalEntry] = {}
    entries = JournalEntry.objects.filter(business=run.business, idempotency_key__in=list(charges)).annotate(
        amount=Sum("lines__debit")
    )
    for entry in entries:
        row = charges[entry.idempotency_key]
        if entry.amount != row.withdrawn:
            raise StatementError(
                f"charge {row.receipt} of {row.withdrawn} is in the books as {entry.amount} (entry #{entry.number})"
            )
        posted[row.receipt] = entry
    return posted


def _post_charge(run: ReconciliationRun, row: StatementRow) -> JournalEntry:
    business = run.business
    charges = account_for_role(business=business, role="mpesa_charges")
    clearing = account_for_role(business=business, role="mpesa_clearing")
    wanted = (row.completed_at or timezone.now()).astimezone(NAIROBI).date()

    def post(day: dt.date) -> JournalEntry:
        return entry_post(
            business=business,
            entry_date=day,
            lines=[LineSpec(account=charges, debit=row.withdrawn), LineSpec(account=clearing, credit=row.withdrawn)],
            memo=f"M-Pesa charge {row.receipt}" + (f" for {row.linked}" if row.linked else ""),
            source_type=SourceType.MPESA,
            source_ref=row.receipt,
            idempotency_key=_charge_key(row.receipt),
        )

    return post_once(business=business, wanted=wanted, post=post)


def _check_till(run: ReconciliationRun, header: StatementHeader) -> list[str]:
    """Refuse a statement of another till; what could not be checked, as notes."""
    till: Till = run.till
    if not header.shortcode:
        return ["the statement names no shortcode: not checked against the till"]
    if header.shortcode not in {till.shortcode, till.store_number} - {""}:
        who = f" ({header.organisation})" if header.organisation else ""
        raise StatementOfAnotherTillError(
            f"this statement is of shortcode {header.shortcode}{who}, not of till {till}: "
            "upload it on the reconciliation of that till"
        )
    return []


def _books_movement(run: ReconciliationRun, lines: list[ReconciliationLine]) -> tuple[Decimal, str]:
    """How much the books say the till's money moved over the run's period, and how that was counted.

    The business's M-Pesa clearing account when this is its only till (so whatever was posted
    there - a bank settlement entered by hand too - counts); else the till's own payments and the
    statement's charges as in the books."""
    if not Till.objects.filter(business_id=run.business_id).exclude(pk=run.till_id).exists():
        totals = JournalLine.objects.filter(
            account__business_id=run.business_id,
            account__role="mpesa_clearing",
            entry__entry_date__gte=run.period_start,
            entry__entry_date__lte=run.period_end,
        ).aggregate(debit=Sum("debit"), credit=Sum("credit"))
        movement = (totals["debit"] or Decimal("0")) - (totals["credit"] or Decimal("0"))
        return movement.quantize(Decimal("0.01")), "M-Pesa clearing account"
    received = sum(
        (
            line.books_amount
            for line in lines
            if line.books_amount is not None and line.status != LineStatus.BALANCE_DIFFERENCE
        ),
        Decimal("0.00"),
    )
    charges = sum(
        (line.statement_amount or Decimal("0") for line in lines if line.status == LineStatus.CHARGE), Decimal("0.00")
    )
    return received - charges, "this till's payments and charges in the books"


def reconciliation_run(*, run_id: int) -> ReconciliationRun:
    """Parse the run's statement and (re)compute its lines; post its charges. Safe to run again.

    Raises StatementOfAnotherTillError (nothing posted, the run failed with the reason) when the
    statement names another shortcode, StatementError when it cannot be read.
    """
    run = ReconciliationRun.objects.select_related("till", "business").get(pk=run_id)
    with run.statement.open("rb") as handle:
        content = handle.read()
    header = parse_statement_header(content, run.statement.name)
    rows = parse_statement(content, run.statement.name)
    try:
        notes = _check_till(run, header)
    except StatementOfAnotherTillError as exc:
        with transaction.atomic():
            run.lines.all().delete()
            ReconciliationRun.objects.filter(pk=run.pk).update(
                state=ReconciliationState.FAILED,
                error=str(exc),
                statement_shortcode=header.shortcode,
                statement_organisation=header.organisation,
                finished_at=timezone.now(),
            )
        raise
    # Each charge in a short transaction of its own (idempotent): the books are locked per posting.
    charge_entries = _charges_posted(run, rows)
    for row in rows:
        if row.completed and row.is_charge and row.withdrawn > 0 and row.receipt not in charge_entries:
            with transaction.atomic():
                charge_entries[row.receipt] = _post_charge(run, row)
    # The lines: reads and writes of the run's own rows only, nothing posted.
    with transaction.atomic():
        run = (
            ReconciliationRun.objects.select_for_update(of=("self",)).select_related("till", "business").get(pk=run_id)
        )
        run.lines.all().delete()
        lines: list[ReconciliationLine] = []
        seen: set[str] = set()
        payments = {p.receipt: p for p in Payment.objects.filter(receipt__in=[r.receipt for r in rows])}
        for row in rows:
            if row.receipt in seen:
                continue
            seen.add(row.receipt)
            line = ReconciliationLine(
                run=run,
                business=run.business,
                receipt=row.receipt,
                completed_at=row.completed_at,
                details=row.details[:255],
                linked_receipt=row.linked[:32],
                other_party=row.other_party[:120],
                account_number=row.account_no[:40],
            )
            if not row.completed:
                line.status = LineStatus.OTHER
                line.details = f"[{row.status}] {row.details}"[:255]
            elif row.is_charge and row.withdrawn > 0:
                line.status = LineStatus.CHARGE
                line.statement_amount = row.withdrawn
                line.entry = charge_entries[row.receipt]
            elif row.paid_in > 0:
                line.statement_amount = row.paid_in
                payment = payments.get(row.receipt)
                if payment is None or payment.till_id != run.till_id:
                    line.status = LineStatus.MISSING_IN_BOOKS
                else:
                    line.payment = payment
                    line.books_amount = payment.amount
                    same = payment.amount == row.paid_in
                    line.status = LineStatus.MATCHED if same else LineStatus.AMOUNT_MISMATCH
            else:
                line.status = LineStatus.OTHER
                line.statement_amount = row.withdrawn or None
            lines.append(line)
        times = [r.completed_at for r in rows if r.completed_at is not None]
        if times:
            start, end = min(times), max(times)
            run.period_start, run.period_end = start.date(), end.date()
            for payment in Payment.objects.filter(till=run.till, paid_at__gte=start, paid_at__lte=end).exclude(
                receipt__in=seen
            ):
                lines.append(
                    ReconciliationLine(
                        run=run,
                        business=run.business,
                        receipt=payment.receipt,
                        completed_at=payment.paid_at,
                        books_amount=payment.amount,
                        payment=payment,
                        status=LineStatus.MISSING_IN_STATEMENT,
                        details="In the books, not in the statement",
                    )
                )
        run.statement_shortcode = header.shortcode
        run.statement_organisation = header.organisation
        run.opening_balance, run.closing_balance = header.opening_balance, header.closing_balance
        run.books_movement = run.balance_difference = None
        if header.opening_balance is None or header.closing_balance is None or not times:
            notes.append("the statement carries no opening and closing balance: balances not compared")
        else:
            statement_movement = header.closing_balance - header.opening_balance
            books, basis = _books_movement(run, lines)
            difference = statement_movement - books
            if max(abs(statement_movement), abs(books), abs(difference)) > MAX_AMOUNT:
                # Beyond any money column (and any till): compared, the run could not be saved.
                notes.append("the balances move by more than a till can hold: balances not compared")
            else:
                run.books_movement, run.balance_difference = books, difference
            if run.balance_difference:
                lines.append(
                    ReconciliationLine(
                        run=run,
                        business=run.business,
                        receipt="BALANCE",
                        status=LineStatus.BALANCE_DIFFERENCE,
                        statement_amount=statement_movement,
                        books_amount=books,
                        details=(
                            f"The statement's balance moved {statement_movement} (from {header.opening_balance} to "
                            f"{header.closing_balance}), the books {books} ({basis}): {run.balance_difference} "
                            "unexplained (money moved outside the back office?)"
                        )[:255],
                    )
                )
        run.notes = "; ".join(notes)[:255]
        ReconciliationLine.objects.bulk_create(lines)
        counts = {status: sum(1 for line in lines if line.status == status) for status in LineStatus.values}
        run.matched_count = counts[LineStatus.MATCHED]
        run.missing_in_books_count = counts[LineStatus.MISSING_IN_BOOKS]
        run.missing_in_statement_count = counts[LineStatus.MISSING_IN_STATEMENT]
        run.mismatch_count = counts[LineStatus.AMOUNT_MISMATCH]
        run.charges_count = counts[LineStatus.CHARGE]
        run.state = ReconciliationState.DONE
        run.error = ""
        run.finished_at = timezone.now()
        run.save()
    return run


def reconciliation_post_missing(*, line: ReconciliationLine, acting_user: Any) -> Payment:
    """Record a payment that is in the statement but not in the books, through the normal posting
    service (same Payment row, same "mpesa:<receipt>" entry: posting it twice is impossible)."""
    with transaction.atomic():
        locked = ReconciliationLine.objects.select_for_update(of=("self",)).select_related("run__till").get(pk=line.pk)
        if locked.status != LineStatus.MISSING_IN_BOOKS or locked.statement_amount is None:
            raise InvalidRequest(f"{locked.receipt} is not a payment missing from the books")
        till = locked.run.till
        shortcode = locked.run.statement_shortcode
        if locked.run.state != ReconciliationState.DONE or (
            shortcode and shortcode not in {till.shortcode, till.store_number} - {""}
        ):
            raise InvalidRequest(f"run {locked.run_id} is not a finished reconciliation of till {till}")
        party, name = split_party(locked.other_party)
        payment, _created = payment_record(
            till=locked.run.till,
            receipt=locked.receipt,
            amount=locked.statement_amount,
            paid_at=locked.completed_at or timezone.now(),
            msisdn=party,
            payer_name=name,
            account_reference=locked.account_number,
            payment_request=None,
            acting_user=acting_user,
        )
        locked.payment = payment
        locked.books_amount = payment.amount
        locked.status = LineStatus.MATCHED if payment.amount == locked.statement_amount else LineStatus.AMOUNT_MISMATCH
        locked.save(update_fields=["payment", "books_amount", "status"])
        run = locked.run
        ReconciliationRun.objects.filter(pk=run.pk).update(
            missing_in_books_count=run.lines.filter(status=LineStatus.MISSING_IN_BOOKS).count(),
            matched_count=run.lines.filter(status=LineStatus.MATCHED).count(),
            mismatch_count=run.lines.filter(status=LineStatus.AMOUNT_MISMATCH).count(),
        )
        return payment


def reconciliation_launch(*, run: ReconciliationRun, acting_user: Any) -> Any:
    """Queue the run as a job on the reports queue (the admin action)."""
    from jobs.services import job_launch

    with transaction.atomic():
        ReconciliationRun.objects.filter(pk=run.pk).update(state=ReconciliationState.QUEUED, error="")
        return job_launch(kind=RECONCILE_JOB, acting_user=acting_user, business=run.business, params={"run_id": run.pk})


@job_kind(RECONCILE_JOB, label="M-Pesa: reconcile a statement", permission="integrations.view_reconciliationrun")
def reconcile_job(ctx: JobContext) -> None:
    run_id = int(ctx.params["run_id"])
    ctx.progress(10, "Reading the statement")
    try:
        run = reconciliation_run(run_id=run_id)
    except StatementOfAnotherTillError as exc:
        raise JobFailed(f"The statement is of another till: {exc}") from exc
    except StatementError as exc:
        ReconciliationRun.objects.filter(pk=run_id).update(state=ReconciliationState.FAILED, error=str(exc))
        raise JobFailed(f"The statement cannot be read: {exc}") from exc
    ctx.progress(
        100,
        f"{run.matched_count} matched, {run.missing_in_books_count} not in the books, "
        f"{run.missing_in_statement_count} not in the statement, {run.mismatch_count} amount differences",
    )
