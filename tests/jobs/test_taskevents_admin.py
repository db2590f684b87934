"""The task events page: read-only, filters by kind, task and periodic task, the traceback shown (and
escaped); only for someone who sees every business and holds "view task event"."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from jobs.models import TaskEvent, TaskEventKind
from tenancy.models import Business
from tests.factories.tenancy import UserFactory, login, staff_with_perms

pytestmark = pytest.mark.django_db

LIST = "admin:jobs_taskevent_changelist"


def _event(kind: str, task_name: str, periodic: str = "", minutes_ago: int = 5, **fields: Any) -> TaskEvent:
    return TaskEvent.objects.create(
        kind=kind,
        task_name=task_name,
        periodic_task=periodic,
        at=timezone.now() - dt.timedelta(minutes=minutes_ago),
        **fields,
    )


@pytest.fixture
def events() -> dict[str, TaskEvent]:
    return {
        "failed": _event(
            TaskEventKind.FAILED,
            "operations.close_due_days",
            periodic="Operations: end-of-day closing of the days that ended",
            task_id="f-1",
            worker="default@box",
            exception="ClosingsFailed: end-of-day closing failed for 1 business(es): <b>Duka</b>",
            traceback='Traceback (most recent call last):\n  File "x.py", line 1\nInvalidAccount: <script>x</script>',
        ),
        "retried": _event(
            TaskEventKind.RETRIED, "payments.process_inbox", task_id="r-1", exception="OperationalError: x"
        ),
        "succeeded": _event(TaskEventKind.SUCCEEDED, "jobs.cleanup_files", periodic="Jobs: clean-up", task_id="s-1"),
    }


def _shown(page: str, events: dict[str, TaskEvent]) -> set[str]:
    return {name for name, e in events.items() if f"/jobs/taskevent/{e.pk}/change/" in page}


def test_the_owner_lists_filters_and_reads_a_traceback(owner_client: Any, events: dict[str, TaskEvent]) -> None:
    page = owner_client.get(reverse(LIST)).content.decode()
    assert _shown(page, events) == {"failed", "retried", "succeeded"}
    assert "&lt;b&gt;Duka&lt;/b&gt;" in page and "<b>Duka</b>" not in page  # exceptions are text, not HTML

    by_kind = owner_client.get(reverse(LIST), {"kind__exact": "failed"}).content.decode()
    assert _shown(by_kind, events) == {"failed"}
    by_task = owner_client.get(reverse(LIST), {"task": "payments.process_inbox"}).content.decode()
    assert _shown(by_task, events) == {"retried"}
    by_periodic = owner_client.get(reverse(LIST), {"periodic": "Jobs: clean-up"}).content.decode()
    assert _shown(by_periodic, events) == {"succeeded"}
    searched = owner_client.get(reverse(LIST), {"q": "ClosingsFailed"}).content.decode()
    assert _shown(searched, events) == {"failed"}

    detail = owner_client.get(reverse("admin:jobs_taskevent_change", args=[events["failed"].pk]))
    assert detail.status_code == 200
    body = detail.content.decode()
    assert 'class="task-traceback"' in body and "InvalidAccount: &lt;script&gt;x&lt;/script&gt;" in body
    assert "<script>x</script>" not in body
    assert "default@box" in body and "f-1" in body


def test_task_events_cannot_be_added_changed_or_deleted(owner_client: Any, events: dict[str, TaskEvent]) -> None:
    failed = events["failed"]
    assert owner_client.get(reverse("admin:jobs_taskevent_add")).status_code == 403
    assert (
        owner_client.post(reverse("admin:jobs_taskevent_delete", args=[failed.pk]), {"post": "yes"}).status_code == 403
    )
    tamper = owner_client.post(reverse("admin:jobs_taskevent_change", args=[failed.pk]), {"exception": "tampered"})
    assert tamper.status_code == 403
    bulk = owner_client.post(
        reverse(LIST), {"action": "delete_selected", "_selected_action": [failed.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    failed.refresh_from_db()
    assert failed.exception.startswith("ClosingsFailed") and TaskEvent.objects.count() == 3


def test_only_someone_who_sees_every_business_and_holds_the_right_reads_them(
    water: Business, events: dict[str, TaskEvent]
) -> None:
    detail = reverse("admin:jobs_taskevent_change", args=[events["failed"].pk])
    # a staff member of one business, even with the right: tracebacks may show any business's data
    staff = staff_with_perms(water, ["jobs.view_taskevent", "jobs.view_job"], username="wanjiru")
    client = login(staff)
    assert client.get(reverse(LIST)).status_code == 403
    assert client.get(detail).status_code == 403
    # someone who sees every business but lacks the right
    manager = UserFactory.create(username="manager", perms=["tenancy.view_all_businesses", "jobs.view_job"])
    assert login(manager).get(reverse(LIST)).status_code == 403
    # with both
    auditor: User = UserFactory.create(username="auditor", perms=["tenancy.view_all_businesses", "jobs.view_taskevent"])
    client = login(auditor)
    assert client.get(reverse(LIST)).status_code == 200
    assert client.get(detail).status_code == 200
