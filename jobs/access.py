"""Who may still read what a job made: checked when its page, its file or its "ready" notice is shown,
not only when it was launched, so a person who loses a business or a right loses its files with it."""

from __future__ import annotations

from typing import Any

from jobs.models import Job
from jobs.registry import kind_permission
from tenancy.scoping import sees_all_businesses, visible_business_ids


def job_readable_by(*, user: Any, job: Job) -> bool:
    """`user` holds the right the job's kind needs (an export: the model's view right) and sees every
    business the job covers: its business, or, for a job over no single business, the businesses
    its launcher saw at launch (none recorded: every business, so the owner only)."""
    if not getattr(user, "is_active", False):
        return False
    permission = kind_permission(job)
    if permission and not user.has_perm(permission):
        return False
    if sees_all_businesses(user):
        return True
    visible = visible_business_ids(user)
    if job.business_id is not None:
        return job.business_id in visible
    return bool(job.scope_business_ids) and set(job.scope_business_ids) <= set(visible)
