"""Every write of the day-to-day operations, one module per area.

Each service is `<entity>_<verb>(*, ...)`, owns its transaction and posts its ledger entry
inside it, with an idempotency key derived from the operation.
"""
