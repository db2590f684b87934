"""Every write of the day-to-day operations, one module per area.

Each service is `<entity>_<verb>(*, ...)`, owns its transaction and posts its ledger entry
inside it, with an idempotency key derived from the operation. The business and staff services
of the foundation are re-exported here because setup_demo and the admin import them from here.
"""

from operations.services.businesses import (
    STAFF_GROUP,
    STAFF_PERMISSIONS,
    business_create,
    business_ensure,
    membership_assign,
    staff_group_ensure,
)

__all__ = [
    "STAFF_GROUP",
    "STAFF_PERMISSIONS",
    "business_create",
    "business_ensure",
    "membership_assign",
    "staff_group_ensure",
]
