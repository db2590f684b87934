"""Row makers for the M-Pesa admins, for tests/backoffice/test_tenancy.py (one row per business)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal

from django.db.models import Model

from accounts.services import chart_ensure_default
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    LineStatus,
    Payment,
    PaymentRequest,
    ReconciliationLine,
    ReconciliationRun,
    Reversal,
    StatusQuery,
    Till,
    UnallocatedPayment,
)
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.payments import payment_record
from tenancy.models import Business
from tests.factories.mpesa import PaymentRequestFactory, TillFactory

_numbers = itertools.count(1)


def _till(business: Business) -> Till:
    till = Till.objects.filter(business=business).first()
    return till or TillFactory.create(business=business)


def _payment(business: Business) -> Payment:
    chart_ensure_default(business=business)
    payment, _ = payment_record(
        till=_till(business),
        receipt=f"SCOPE{next(_numbers):05d}{business.pk}",
        amount=Decimal("10.00"),
        paid_at=dt.datetime.now(tz=NAIROBI),
        msisdn="",
        payer_name=f"payer of {business.name}",
        account_reference="",
        payment_request=None,
    )
    return payment


def _inbox(business: Business) -> InboxMessage:
    return InboxMessage.objects.create(
        till=_till(business), kind=InboxKind.C2B_CONFIRMATION, daraja_id=f"SCOPEIN{next(_numbers)}", body="{}"
    )


def _request(business: Business) -> PaymentRequest:
    return PaymentRequestFactory.create(till=_till(business))


def _reversal(business: Business) -> Reversal:
    payment = _payment(business)
    return Reversal.objects.create(business=business, payment=payment, amount=payment.amount, reason="scoping")


def _unallocated(business: Business) -> UnallocatedPayment:
    return UnallocatedPayment.objects.get(pk=_payment(business).pk)


def _run(business: Business) -> ReconciliationRun:
    # Only the file's name is stored: the scoping tests never open it.
    return ReconciliationRun.objects.create(
        business=business, till=_till(business), statement=f"mpesa/statements/scoping-{business.pk}.csv"
    )


def _line(business: Business) -> ReconciliationLine:
    return ReconciliationLine.objects.create(
        run=_run(business), business=business, receipt=f"SCOPELN{next(_numbers)}", status=LineStatus.MISSING_IN_BOOKS
    )


def _status_query(business: Business) -> StatusQuery:
    return StatusQuery.objects.create(business=business, till=_till(business), receipt=f"SCOPESQ{next(_numbers):03d}")


ROW_MAKERS: dict[type[Model], Callable[[Business], Model]] = {
    Till: _till,
    InboxMessage: _inbox,
    PaymentRequest: _request,
    Payment: _payment,
    UnallocatedPayment: _unallocated,
    Reversal: _reversal,
    ReconciliationRun: _run,
    ReconciliationLine: _line,
    StatusQuery: _status_query,
}
