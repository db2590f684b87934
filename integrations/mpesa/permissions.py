"""The custom permissions of the M-Pesa pages: each moves money or asks Daraja to.

Declared in the models' Meta (app label `integrations`); the admins check them through
`has_<name>_permission` methods. None is in the staff group: the owner grants them to a person
(docs/permissions.md).
"""

from __future__ import annotations

REVERSE_PAYMENT = "integrations.reverse_payment"
ALLOCATE_PAYMENT = "integrations.allocate_payment"
REPROCESS_CALLBACK = "integrations.reprocess_inboxmessage"
POST_MISSING_RECEIPT = "integrations.post_missing_receipt"
REQUEST_STK_PAYMENT = "integrations.request_stk_payment"

MONEY_PERMISSIONS = (REVERSE_PAYMENT, ALLOCATE_PAYMENT, REPROCESS_CALLBACK, POST_MISSING_RECEIPT, REQUEST_STK_PAYMENT)
