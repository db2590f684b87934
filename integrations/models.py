"""Django finds this app's models here; they live in their integration's package."""

from integrations.mpesa.models import (
    InboxMessage,
    Payment,
    PaymentRequest,
    ReconciliationLine,
    ReconciliationRun,
    Reversal,
    Till,
    UnallocatedPayment,
)

__all__ = [
    "InboxMessage",
    "Payment",
    "PaymentRequest",
    "ReconciliationLine",
    "ReconciliationRun",
    "Reversal",
    "Till",
    "UnallocatedPayment",
]
