"""Received payments: the Payment row and its ledger entry (once per receipt), placing the money
(what a reference owes is applied, the rest is credit or waits in suspense) and allocation by hand."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeVar

from django.db import connection, models, transaction
from django.utils import timezone

from accounts.exceptions import InvalidAccount, LedgerError, PeriodLocked
from accounts.models import Account, JournalEntry, SourceType
from accounts.selectors import books_lock_date
from accounts.services import EntrySpec, LineSpec, entries_post, entry_post
from integrations.mpesa.exceptions import InvalidRequest, NeedsAttention, NotUnallocated, TransientProcessingError
from integrations.mpesa.matching import (
    Match,
    PhoneKey,
    Placed,
    claim_for,
    customers_by_phone,
    match_payment,
    msisdn_kind,
)
from integrations.mpesa.models import InboxMessage, Payment, PaymentApplication, PaymentRequest, PaymentStatus, Till
from integrations.mpesa.payloads import NAIROBI, C2BTransaction, parse_c2b_confirmation
from operations.exceptions import InvalidInput, InvalidState
from operations.models import Customer, PaymentMethod, Sale, SaleStatus
from operations.payments import payment_placed
from tenancy.models import Business

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)


def payment_outcome(payment: Payment, created: bool) -> str:
    if not created:
        return f"receipt {payment.receipt} already recorded (payment {payment.pk}); details updated"
    where = "suspense (unallocated)" if payment.status == PaymentStatus.UNALLOCATED else payment.match_description
    return f"posted {payment.receipt} KES {payment.amount}: {where}"[:255]


# The lock of everything that records a receipt (PostingGroup.receipts_lock).
_RECEIPT_LOCKS_SQL = """
SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n
"""


@dataclass
class PostingGroup:
    """What one transaction recording payments reads and locks once for all of them.

    inbox.inbox_process_group records up to a hundred payments in one transaction: it takes every
    receipt's lock and reads their Payment rows, the STK requests and the customers their phone
    numbers point to with a few statements for the whole group, and each payment then costs a
    handful (its ledger entry, its Payment and PaymentApplication rows). The accounts and the lock
    date of a business are read once per group. payment_record without a group makes a group of
    one: the same locks and reads, for one receipt.

    Only valid in the transaction that filled it (its locks end with it). Locks are taken in one
    order in every transaction: STK requests, then receipts (sorted), then their Payment rows.

    `deferred`: the new Payment and PaymentApplication rows wait in the group and are inserted
    together by flush(), which the caller calls before its commit. A payment announced again in the
    same group is completed in memory before its INSERT; an allocation flushes first (it counts the
    placings in the table). Nothing else reads them in between: the listeners get the receipt and
    the entry, not the Payment row.
    The receipts' ledger entries wait too (entry_add) and flush() posts them first, with one
    statement (accounts.services.entries_post), then records what each placing records (its
    PaymentApplication row, the listeners). A placing on a reference that a waiting one places on
    too (two payments of one sale) posts the waiting ones first: what the reference still owes is
    read after the earlier placing is recorded, as one by one.
    """

    deferred: bool = False

    # Receipts whose lock this transaction holds, and their Payment rows (locked), found or created here.
    locked: set[str] = field(default_factory=set)
    payments: dict[str, Payment] = field(default_factory=dict)
    # STK requests by CheckoutRequestID (locked); `asked` also holds the ids no request has.
    requests: dict[str, PaymentRequest] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)
    # (business id, phone key) -> the customer a plain or hashed phone number points to, or None.
    customers: dict[tuple[int, PhoneKey], Customer | None] = field(default_factory=dict)
    _accounts: dict[int, dict[str, Account]] = field(default_factory=dict)
    _lock_dates: dict[int, dt.date | None] = field(default_factory=dict)
    _new_payments: list[Payment] = field(default_factory=list)
    _new_applications: list[PaymentApplication] = field(default_factory=list)
    _postings: list[_Posting] = field(default_factory=list)
    # The inbox row a posting added now is for (set by the caller), and the row whose waiting
    # posting was refused (flush() raised for it), so that the caller sets that row alone.
    tag: int | None = None
    failed: int | None = None

    def payment_add(self, payment: Payment) -> None:
        """Insert a new Payment row (in flush() when deferred)."""
        if self.deferred:
            self._new_payments.append(payment)
        else:
            payment.save(force_insert=True)
        self.payments[payment.receipt] = payment

    def payment_save(self, payment: Payment, fields: list[str]) -> None:
        """Save `fields` of a Payment row of the group (nothing to do while its INSERT waits: it
        inserts them)."""
        if payment.pk is not None:
            payment.save(update_fields=fields)

    def application_add(self, application: PaymentApplication) -> None:
        """Insert a PaymentApplication row (in flush() when deferred)."""
        if self.deferred:
            self._new_applications.append(application)
        else:
            application.save(force_insert=True)

    def entry_add(
        self, spec: EntrySpec, posted: Callable[[JournalEntry], None], *, reference: tuple[int, str, int | None] | None
    ) -> None:
        """Post `spec` (its date is the wanted one: the first open day is taken), then call
        `posted` with the entry. When deferred both wait for flush() (see the class); else at once.
        `reference`: (business id, kind, id) of what the placing pays, if anything."""
        if not self.deferred:
            entry = post_once(
                business=spec.business,
                wanted=spec.entry_date,
                post=lambda day: entry_post(**{**vars(spec), "entry_date": day}),
                group=self,
            )
            posted(entry)
            return
        day = self.open_date(spec.business.pk, spec.entry_date)
        self._postings.append(_Posting(replace(spec, entry_date=day), posted, reference, self.tag))

    def reference_settle(self, business_id: int, match: Match | None) -> None:
        """Before reading what `match`'s reference owes: post the waiting entries if one of them
        places on that reference too (its placing must be recorded first)."""
        if match is None:
            return
        reference = (business_id, match.reference_kind, match.reference_id)
        if any(posting.reference == reference for posting in self._postings):
            self.entries_post()

    def entries_post(self) -> None:
        """Post the waiting entries (one statement), then record each placing, in order. A refused
        entry raises its error (PeriodLocked: TransientProcessingError) and sets `failed` to its tag."""
        postings, self._postings = self._postings, []
        if not postings:
            return
        results = entries_post([posting.spec for posting in postings])
        for posting, result in zip(postings, results, strict=True):
            if isinstance(result, LedgerError):
                self.failed = posting.tag
                if isinstance(result, PeriodLocked):
                    raise TransientProcessingError(
                        f"the books moved their lock date while posting: {result}"
                    ) from result
                raise result
        for posting, result in zip(postings, results, strict=True):
            assert isinstance(result, JournalEntry)
            self.failed = posting.tag
            posting.posted(result)
        self.failed = None

    def flush(self) -> None:
        """Post the waiting entries (one statement), then insert the Payment rows, then the
        PaymentApplication rows, waiting in the group: one statement each."""
        self.entries_post()
        if self._new_payments:
            Payment.objects.bulk_create(self._new_payments)
            self._new_payments = []
        if self._new_applications:
            PaymentApplication.objects.bulk_create(self._new_applications)
            self._new_applications = []

    def requests_lock(self, checkout_ids: Iterable[str]) -> None:
        """Lock and keep the STK requests of `checkout_ids` (those not asked about yet)."""
        new = sorted(set(checkout_ids) - self.asked)
        if not new:
            return
        for request in PaymentRequest.objects.select_for_update().filter(checkout_request_id__in=new).order_by("pk"):
            self.requests[request.checkout_request_id] = request
        self.asked.update(new)

    def receipts_lock(self, receipts: Iterable[str]) -> None:
        """Take the locks of `receipts` (sorted: two groups never wait for each other in a circle),
        then read and lock their Payment rows. Serialises everything that records a receipt (an
        STK callback and the C2B confirmation of one payment meet here) until the transaction ends."""
        new = sorted(set(receipts) - self.locked)
        if not new:
            return
        with connection.cursor() as cursor:
            cursor.execute(_RECEIPT_LOCKS_SQL, [[f"mpesa:{receipt}" for receipt in new]])
        self.locked.update(new)
        found = Payment.objects.select_for_update(of=("self",)).select_related("business").filter(receipt__in=new)
        for payment in found.order_by("pk"):
            self.payments[payment.receipt] = payment

    def customers_read(self, business: Business, msisdns: Iterable[str]) -> None:
        """Read at once the customers of `business` that plain or hashed numbers `msisdns` point to
        (matching.customers_by_phone); match_payment then asks no more for them."""
        self.customers.update(
            {(business.pk, key): found for key, found in customers_by_phone(business, msisdns).items()}
        )

    def accounts(self, business: Business, *roles: str) -> list[Account]:
        """The business's accounts for `roles`, in that order (read once per group and business)."""
        known = self._accounts.setdefault(business.pk, {})
        missing = [role for role in roles if role not in known]
        if missing:
            wanted = {*missing, *_PAYMENT_ROLES}
            known.update({a.role: a for a in Account.objects.filter(business=business, role__in=wanted)})
            for role in missing:
                if role not in known:
                    raise InvalidAccount(f"business {business.pk} has no account with role {role!r}")
        return [known[role] for role in roles]

    def open_date(self, business_id: int, wanted: dt.date) -> dt.date:
        """`wanted` unless the books are closed on it; then the first open day (the lock date is
        read once per group and business)."""
        if business_id not in self._lock_dates:
            self._lock_dates[business_id] = books_lock_date(business_id=business_id)
        lock_date = self._lock_dates[business_id]
        if lock_date is not None and wanted <= lock_date:
            return lock_date + dt.timedelta(days=1)
        return wanted


@dataclass(frozen=True)
class _Posting:
    """An entry waiting in a deferred PostingGroup: what to post, what to do with the entry, the
    reference its placing pays and the inbox row it is for."""

    spec: EntrySpec
    posted: Callable[[JournalEntry], None]
    reference: tuple[int, str, int | None] | None
    tag: int | None


# The accounts a receipt's posting uses, read together the first time one of them is needed.
_PAYMENT_ROLES = ("mpesa_clearing", "receivables", "suspense")


def c2b_till_check(till: Till, tx: C2BTransaction) -> None:
    """A confirmation must be for the till whose URL it came to (NeedsAttention otherwise)."""
    if tx.business_short_code not in {till.shortcode, till.store_number} - {""}:
        raise NeedsAttention(
            f"confirmation for shortcode {tx.business_short_code} arrived on the URL of till {till.shortcode}"
        )


def c2b_confirmation_process(
    msg: InboxMessage, *, confirmation: C2BTransaction | None = None, group: PostingGroup | None = None
) -> str:
    """Record the payment a C2B confirmation announces. `confirmation`: the body already parsed;
    `group`: the transaction's PostingGroup (inbox.inbox_process_group)."""
    tx = confirmation or parse_c2b_confirmation(msg.body)
    till = msg.till
    c2b_till_check(till, tx)
    payment, created = payment_record(
        till=till,
        receipt=tx.trans_id,
        amount=tx.amount,
        paid_at=tx.trans_time,
        msisdn=tx.msisdn,
        payer_name=tx.payer_name,
        account_reference=tx.bill_ref_number,
        payment_request=None,
        group=group,
    )
    return payment_outcome(payment, created)


def post_once(*, business: Business, wanted: dt.date, post: Any, group: PostingGroup | None = None) -> JournalEntry:
    """Post on `wanted`, or on the first open date when the books are closed on it.

    The lock date is read before posting, so the posting is not refused for it and nothing has to
    be undone inside the caller's transaction (no savepoint needed). If the lock date moves past the
    date meanwhile, PostgreSQL refuses the posting and the caller retries later
    (TransientProcessingError)."""
    day = (group or PostingGroup()).open_date(business.pk, wanted)
    try:
        return post(day)  # type: ignore[no-any-return]
    except PeriodLocked as exc:
        raise TransientProcessingError(f"the books moved their lock date while posting: {exc}") from exc


def payment_record(
    *,
    till: Till,
    receipt: str,
    amount: Decimal,
    paid_at: dt.datetime,
    msisdn: str,
    payer_name: str,
    account_reference: str,
    payment_request: PaymentRequest | None,
    acting_user: Any = None,
    group: PostingGroup | None = None,
) -> tuple[Payment, bool]:
    """Record money received on `till` under M-Pesa `receipt`: (payment, created).

    The first call for a receipt creates the Payment and posts, with idempotency key
    "mpesa:<receipt>", Dr M-Pesa clearing / Cr receivables for what the matched reference owed
    (and what is over it, when it has a customer to credit) / Cr suspense for the rest (all of it
    when unmatched); see _payment_split. Dated the payment's Nairobi date (or the first open day
    when that is closed; paid_at keeps the truth).
    Later calls (the STK callback after the C2B confirmation, a reconciliation) only fill in what
    the Payment row lacks, and allocate what sits in suspense if it can now be matched.
    Runs in the caller's transaction (or its own); safe to retry. `group`: the transaction's
    PostingGroup, when it records several payments (its locks and reads are reused).
    """
    # No savepoint of its own: inside inbox_process a failure rolls back to that savepoint anyway.
    with transaction.atomic(savepoint=False):
        group = group or PostingGroup()
        group.receipts_lock([receipt])  # nothing to do when the group holds it already
        existing = group.payments.get(receipt)
        if existing is not None:
            _payment_enrich(existing, till, amount, msisdn, payer_name, account_reference, payment_request, group)
            return existing, False
        business = till.business
        match, how = match_payment(
            business=business,
            account_reference=account_reference,
            request=payment_request,
            msisdn=msisdn,
            customers=group.customers,
        )
        group.reference_settle(business.pk, match)
        split = _payment_split(business, match, amount, credit_role="receivables")
        clearing, receivables, suspense = group.accounts(business, *_PAYMENT_ROLES)
        lines = [LineSpec(account=clearing, debit=amount)]
        if split.moved:
            lines.append(LineSpec(account=receivables, credit=split.moved))
        if split.unallocated:
            lines.append(LineSpec(account=suspense, credit=split.unallocated))
        spec = EntrySpec(
            business=business,
            entry_date=paid_at.astimezone(NAIROBI).date(),
            lines=lines,
            memo=f"M-Pesa {receipt}",
            source_type=SourceType.MPESA,
            source_ref=receipt,
            idempotency_key=f"mpesa:{receipt}",
            acting_user=acting_user,
        )
        payment = Payment(
            business=business,
            till=till,
            receipt=receipt,
            amount=amount,
            paid_at=paid_at,
            msisdn=msisdn[:80],
            msisdn_kind=msisdn_kind(msisdn) if msisdn else "",
            payer_name=payer_name[:120],
            account_reference=account_reference[:40],
            payment_request=payment_request,
        )
        # Inserted as placed (one INSERT, no UPDATE after it), then what the placing records; in a
        # deferred group when its entry is posted (flush), known to the group's payments at once.
        _placing_set(payment, split, entry=None, how=how, acting_user=None)
        group.payments[receipt] = payment

        def posted(entry: JournalEntry) -> None:
            payment.entry = entry
            group.payment_add(payment)
            _placing_record(payment, split, entry=entry, credit_role="receivables", group=group)

        reference = (business.pk, match.reference_kind, match.reference_id) if match is not None else None
        group.entry_add(spec, posted, reference=reference)
        return payment, True


def _payment_enrich(
    payment: Payment,
    till: Till,
    amount: Decimal,
    msisdn: str,
    payer_name: str,
    account_reference: str,
    request: PaymentRequest | None,
    group: PostingGroup,
) -> None:
    if payment.till_id != till.pk:
        raise NeedsAttention(f"receipt {payment.receipt} was already recorded on another till ({payment.till_id})")
    if payment.amount != amount:
        raise NeedsAttention(f"receipt {payment.receipt} recorded as KES {payment.amount}, now announced as {amount}")
    changed: list[str] = []
    kind = msisdn_kind(msisdn) if msisdn else ""
    # A plain number beats a hash, a hash beats a mask.
    rank = {"plain": 3, "sha256": 2, "masked": 1}
    if msisdn and rank.get(kind, 0) > rank.get(payment.msisdn_kind, 0):
        payment.msisdn, payment.msisdn_kind = msisdn[:80], kind
        changed += ["msisdn", "msisdn_kind"]
    if payer_name and not payment.payer_name:
        payment.payer_name = payer_name[:120]
        changed.append("payer_name")
    if account_reference and not payment.account_reference:
        payment.account_reference = account_reference[:40]
        changed.append("account_reference")
    if request is not None and payment.payment_request_id is None:
        payment.payment_request = request
        changed.append("payment_request")
    if changed:
        group.payment_save(payment, changed)
    if payment.status == PaymentStatus.UNALLOCATED:
        match, how = match_payment(
            business=payment.business,
            account_reference=payment.account_reference,
            request=payment.payment_request,
            msisdn=payment.msisdn,
            customers=group.customers,
        )
        if match is not None:
            # Nothing moves when the match takes nothing more (e.g. the sale it overpaid): it stays for a person.
            _allocate(
                payment,
                credit_role="receivables",
                match=match,
                how=how,
                acting_user=None,
                refuse_nothing=False,
                group=group,
            )


@dataclass(frozen=True)
class _Split:
    """Where an amount goes: `applied` to the matched reference, `credit` (over what it owed) to
    customer `customer_id`'s credit, `unallocated` to suspense for a person; `description` says so."""

    match: Match | None
    customer_id: int | None
    applied: Decimal
    credit: Decimal
    unallocated: Decimal
    description: str

    @property
    def moved(self) -> Decimal:
        """What is credited to the chosen account (receivables): applied + credit."""
        return self.applied + self.credit


def _payment_split(business: Business, match: Match | None, amount: Decimal, *, credit_role: str) -> _Split:
    """Split `amount` by what `match` still owes (asked of the claim resolvers, under their lock).

    Only what is owed is applied to the reference (a sale never gets more than its total); the
    rest goes to the customer's credit when the reference (or the match) has a customer, else it
    stays in suspense with the reason. Never silently: the description says where each part went.
    Money allocated to another account than receivables (owner's money, an expense refund) is
    not a customer's and is moved whole.
    """
    zero = Decimal("0.00")
    if match is None:
        return _Split(None, None, zero, zero, amount, "")
    if credit_role != "receivables":
        return _Split(match, match.customer_id, amount, zero, zero, match.description)
    claim = claim_for(business, match)
    if match.customer_id is not None and claim.customer_id not in (None, match.customer_id):
        raise InvalidRequest(f"{match.description}: the reference belongs to another customer than the one chosen")
    customer_id = claim.customer_id if claim.customer_id is not None else match.customer_id
    applied = amount if claim.owed is None else max(min(amount, claim.owed), zero)
    over = amount - applied
    description = match.description
    if not over:
        return _Split(match, customer_id, applied, zero, zero, description)
    why = claim.description or f"it owed KES {applied}"
    part = f"KES {over} paid over it" if applied else f"the KES {over}"
    if customer_id is not None:
        text = f"{description}: {why}; {part} is the customer's credit"
        return _Split(match, customer_id, applied, over, zero, text[:255])
    text = f"{description}: {why}; {part} waits in suspense (no customer to credit)"
    return _Split(match, None, applied, zero, over, text[:255])


def _placing_set(
    payment: Payment, split: _Split, *, entry: JournalEntry | None, how: str, acting_user: Any
) -> list[str]:
    """Set on `payment` what placing `split` by `entry` changes (its state, what it was matched to,
    the allocation when `entry` is not its own; None: its own, not posted yet); the names of the
    fields set."""
    fields = ["status", "unallocated_amount"]
    payment.unallocated_amount = split.unallocated
    payment.status = PaymentStatus.UNALLOCATED if split.unallocated else PaymentStatus.ALLOCATED
    match = split.match
    if match is not None:
        payment.customer_id = split.customer_id
        payment.reference_kind = match.reference_kind
        payment.reference_id = match.reference_id
        payment.match_description = split.description[:255]
        payment.matched_by = how
        fields += ["customer", "reference_kind", "reference_id", "match_description", "matched_by"]
    if entry is not None and entry.pk != payment.entry_id:
        payment.allocation_entry = entry
        payment.allocated_by = acting_user if getattr(acting_user, "pk", None) else None
        payment.allocated_at = timezone.now()
        fields += ["allocation_entry", "allocated_by", "allocated_at"]
    return fields


def _placing_record(
    payment: Payment, split: _Split, *, entry: JournalEntry, credit_role: str, group: PostingGroup | None = None
) -> None:
    """The application row of a placing of `payment` (through `group` when given), and the
    listeners (operations: the sale's amount paid, the customer's transactions)."""
    application = PaymentApplication(
        payment=payment,
        entry=entry,
        credit_role=credit_role,
        customer_id=split.customer_id,
        reference_kind=split.match.reference_kind if split.match else "",
        reference_id=split.match.reference_id if split.match else None,
        applied=split.applied,
        credit=split.credit,
        unallocated=split.unallocated,
    )
    if group is not None:
        group.application_add(application)
    else:
        application.save(force_insert=True)
    match = split.match
    if split.unallocated and match is not None:
        logger.warning("M-Pesa %s: %s", payment.receipt, split.description)
    if match is not None and credit_role == "receivables" and split.moved:
        placed = Placed(
            replace(match, customer_id=split.customer_id),
            split.applied,
            split.credit,
            entry,
            timezone.localdate(payment.paid_at),
        )
        payment_placed(business_id=payment.business_id, receipt=payment.receipt, placed=placed)


def _payment_placed(
    payment: Payment,
    split: _Split,
    *,
    entry: JournalEntry,
    how: str,
    credit_role: str,
    acting_user: Any,
    group: PostingGroup | None = None,
) -> None:
    """After `entry` placed `split` of the saved `payment`: the payment's state, the application row
    and the listeners. One place for the receipt's own posting (payment_record: set before its
    INSERT) and every allocation, so both record the same things."""
    fields = _placing_set(payment, split, entry=entry, how=how, acting_user=acting_user)
    payment.save(update_fields=fields)
    _placing_record(payment, split, entry=entry, credit_role=credit_role, group=group)


def _allocate(
    payment: Payment,
    *,
    credit_role: str,
    match: Match,
    how: str,
    acting_user: Any,
    refuse_nothing: bool = True,
    group: PostingGroup | None = None,
) -> JournalEntry | None:
    """Move what of `payment` sits in suspense to `match` (see _payment_split): Dr suspense / Cr
    `credit_role`, key "mpesa-allocate:<receipt>" (":<n>" for a later one). The payment is locked
    by the caller. Nothing to move: InvalidRequest (or None when `refuse_nothing` is off)."""
    business = payment.business
    split = _payment_split(business, match, payment.unallocated_amount, credit_role=credit_role)
    if not split.moved:
        if refuse_nothing:
            raise InvalidRequest(f"{split.description or match.description}: nothing of it can be allocated there")
        return None
    group = group or PostingGroup()
    group.flush()  # the placings counted below are all in the table
    suspense, credit = group.accounts(business, "suspense", credit_role)
    placings = PaymentApplication.objects.filter(payment=payment).count()
    key = f"mpesa-allocate:{payment.receipt}" + (f":{placings}" if placings > 1 else "")

    def post(day: dt.date) -> JournalEntry:
        return entry_post(
            business=business,
            entry_date=day,
            lines=[LineSpec(account=suspense, debit=split.moved), LineSpec(account=credit, credit=split.moved)],
            memo=f"M-Pesa {payment.receipt} allocated: {match.description}"[:255],
            source_type=SourceType.MPESA,
            source_ref=payment.receipt,
            idempotency_key=key,
            acting_user=acting_user,
        )

    entry = post_once(business=business, wanted=timezone.localdate(), post=post, group=group)
    _payment_placed(payment, split, entry=entry, how=how, credit_role=credit_role, acting_user=acting_user, group=group)
    return entry


def payment_allocate(
    *,
    payment: Payment,
    credit_role: str = "receivables",
    customer: Customer | None = None,
    reference_kind: str,
    reference_id: int | None,
    acting_user: Any,
) -> JournalEntry:
    """Allocate what of a payment sits in suspense: Dr suspense / Cr `credit_role`, key
    "mpesa-allocate:<receipt>", and record it as the automatic match does (one path,
    _payment_placed): on receivables, the sale's amount paid and the customer's transactions;
    only what the reference owes is applied, the rest is the customer's credit or stays in suspense.

    Locks the payment; raises NotUnallocated unless some of it is in suspense, InvalidRequest if the
    customer belongs to another business or nothing can go there. Returns the allocation entry.
    Runs in the caller's transaction when there is one.
    """
    with transaction.atomic():
        locked = Payment.objects.select_for_update().select_related("business").get(pk=payment.pk)
        if locked.status != PaymentStatus.UNALLOCATED:
            raise NotUnallocated(f"payment {locked.receipt} is {locked.get_status_display().lower()}, not in suspense")
        if customer is not None and customer.business_id != locked.business_id:
            raise InvalidRequest("that customer belongs to another business")
        description = f"{reference_kind} {reference_id}" if reference_id is not None else reference_kind
        if customer is not None:
            description = f"{description} ({customer.name})"
        match = Match(customer.pk if customer else None, reference_kind, reference_id, f"allocated to {description}")
        entry = _allocate(
            locked, credit_role=credit_role, match=match, how="allocated by hand", acting_user=acting_user
        )
        assert entry is not None
        # The caller's object reflects the allocation too.
        for name in (
            "status",
            "customer_id",
            "reference_kind",
            "reference_id",
            "match_description",
            "allocation_entry_id",
            "allocated_at",
            "unallocated_amount",
        ):
            setattr(payment, name, getattr(locked, name))
        return entry


def sale_settle_mpesa(*, sale: Sale, payment: Payment, acting_user: Any = None) -> Sale:
    """Settle an M-Pesa sale with a received payment that sits in suspense (unallocated):
    payment_allocate posts Dr suspense / Cr receivables and records it as any
    matched payment (the sale's amount paid, the customer's transactions; what is over what the
    sale owes is the customer's credit or stays in suspense), in this same transaction."""
    with transaction.atomic():
        # The payment before the sale, as every M-Pesa placing locks them (no deadlock with "Allocate").
        type(payment).objects.select_for_update().filter(pk=payment.pk).values_list("pk", flat=True).first()
        sale = Sale.objects.select_for_update().get(pk=sale.pk)
        if sale.status != SaleStatus.POSTED or sale.payment_method == PaymentMethod.CASH:
            raise InvalidState(f"Sale {sale.number} is not waiting for an M-Pesa payment.")
        if sale.total - sale.amount_paid <= 0:
            raise InvalidState(f"Sale {sale.number} is paid already.")
        if payment.business_id != sale.business_id:
            raise InvalidInput("That M-Pesa payment was received by another business.")
        payment_allocate(
            payment=payment,
            credit_role="receivables",
            customer=sale.customer,
            reference_kind="sale",
            reference_id=sale.pk,
            acting_user=acting_user,
        )
        sale.refresh_from_db()
        return sale
