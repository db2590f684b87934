"""Schedules in the admin: the periodic tasks list and page show each task's last success and last
failure (a failing task stands out, its traceback one click away for those who may read it), the
actions still work on the annotated list, and a business's closing time is edited on its page by
someone with "change business" only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from backoffice.navigation import sidebar_navigation
from jobs.models import TaskEvent, TaskEventKind
from tenancy.models import Business
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

LIST = "admin:django_celery_beat_periodictask_changelist"


def _task(name: str, task: str = "jobs.cleanup_files") -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=task, interval=every)


def _event(kind: str, periodic: str, hours_ago: float, exception: str = "") -> TaskEvent:
    return TaskEvent.objects.create(
        kind=kind,
        task_name="jobs.cleanup_files",
        periodic_task=periodic,
        at=timezone.now() - dt.timedelta(hours=hours_ago),
        exception=exception,
        traceback="Traceback (most recent call last):\n...",
    )


@pytest.fixture
def tasks() -> dict[str, PeriodicTask]:
    healthy, failing, fresh = _task("Healthy"), _task("Broken"), _task("Brand new")
    _event(TaskEventKind.FAILED, "Healthy", 5, "OSError: disk full")
    _event(TaskEventKind.SUCCEEDED, "Healthy", 1)
    _event(TaskEventKind.SUCCEEDED, "Broken", 30)
    _event(TaskEventKind.FAILED, "Broken", 0.5, "ClosingsFailed: Duka & Gas: <i>InvalidAccount</i>")
    return {"healthy": healthy, "failing": failing, "fresh": fresh}


def _row(page: str, task: PeriodicTask) -> str:
    """The changelist row of `task` (from its change link to the end of its <tr>)."""
    start = page.index(f"/periodictask/{task.pk}/change/")
    return page[start : page.index("</tr>", start)]


def test_the_list_shows_last_success_and_failure_and_a_failing_task_stands_out(
    owner_client: Any, tasks: dict[str, PeriodicTask]
) -> None:
    page = owner_client.get(reverse(LIST)).content.decode()
    assert "1 periodic task is failing: Broken." in page
    broken, healthy, fresh = (_row(page, tasks[k]) for k in ("failing", "healthy", "fresh"))
    assert "Failing" in broken and "OK" not in broken
    failure = TaskEvent.objects.get(periodic_task="Broken", kind=TaskEventKind.FAILED)
    assert reverse("admin:jobs_taskevent_change", args=[failure.pk]) in broken
    assert "ClosingsFailed: Duka &amp; Gas: &lt;i&gt;InvalidAccount&lt;/i&gt;" in broken
    assert "OK" in healthy and "OSError: disk full" in healthy  # an old failure, shown but not failing
    assert "Not run yet" in fresh

    only_failing = owner_client.get(reverse(LIST), {"result": "failing"}).content.decode()
    assert f"/periodictask/{tasks['failing'].pk}/change/" in only_failing
    assert f"/periodictask/{tasks['healthy'].pk}/change/" not in only_failing
    ok = owner_client.get(reverse(LIST), {"result": "ok"}).content.decode()
    assert f"/periodictask/{tasks['healthy'].pk}/change/" in ok
    assert f"/periodictask/{tasks['failing'].pk}/change/" not in ok


def test_the_change_page_shows_the_last_runs(owner_client: Any, tasks: dict[str, PeriodicTask]) -> None:
    page = owner_client.get(reverse("admin:django_celery_beat_periodictask_change", args=[tasks["failing"].pk]))
    assert page.status_code == 200
    body = page.content.decode()
    failure = TaskEvent.objects.get(periodic_task="Broken", kind=TaskEventKind.FAILED)
    assert "Last runs" in body and "Failing" in body
    assert reverse("admin:jobs_taskevent_change", args=[failure.pk]) in body
    add = owner_client.get(reverse("admin:django_celery_beat_periodictask_add"))
    assert add.status_code == 200 and "Last runs" not in add.content.decode()


def test_without_the_task_events_right_the_failure_time_shows_but_not_its_text(
    water: Business, tasks: dict[str, PeriodicTask]
) -> None:
    staff = staff_with_perms(water, ["django_celery_beat.view_periodictask"], username="wanjiru")
    page = login(staff).get(reverse(LIST)).content.decode()
    broken = _row(page, tasks["failing"])
    assert "Failing" in broken and "ClosingsFailed" not in broken and "/jobs/taskevent/" not in broken
    detail = login(staff).get(reverse("admin:django_celery_beat_periodictask_change", args=[tasks["failing"].pk]))
    assert detail.status_code == 200 and "ClosingsFailed" not in detail.content.decode()


def test_enable_and_disable_need_the_change_right_and_work_on_the_annotated_list(
    water: Business, owner_client: Any, tasks: dict[str, PeriodicTask]
) -> None:
    broken = tasks["failing"]
    viewer = staff_with_perms(water, ["django_celery_beat.view_periodictask"], username="viewer")
    login(viewer).post(reverse(LIST), {"action": "disable_tasks", "_selected_action": [broken.pk]})
    broken.refresh_from_db()
    assert broken.enabled

    owner_client.post(reverse(LIST), {"action": "disable_tasks", "_selected_action": [broken.pk]})
    broken.refresh_from_db()
    assert not broken.enabled
    page = owner_client.get(reverse(LIST)).content.decode()
    assert "is failing" not in page  # a disabled task is not shouted about
    owner_client.post(reverse(LIST), {"action": "enable_tasks", "_selected_action": [broken.pk]})
    broken.refresh_from_db()
    assert broken.enabled


# -- the business's closing time ----------------------------------------------------------------------


def _business_form(business: Business, closing_time: str) -> dict[str, str]:
    return {
        "name": business.name,
        "kind": business.kind,
        "is_active": "on",
        "closing_time": closing_time,
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }


def test_the_closing_time_is_edited_with_change_business_only(water: Business, laundry: Business) -> None:
    url = reverse("admin:tenancy_business_change", args=[water.pk])
    viewer = staff_with_perms(water, ["tenancy.view_business"], username="viewer")
    assert login(viewer).post(url, _business_form(water, "19:30")).status_code == 403
    water.refresh_from_db()
    assert water.closing_time == dt.time(21, 0)

    manager = staff_with_perms(water, ["tenancy.view_business", "tenancy.change_business"], username="manager")
    client = login(manager)
    page = client.get(url).content.decode()
    assert 'name="closing_time"' in page
    response = client.post(url, _business_form(water, "19:30"))
    assert response.status_code == 302, response.content.decode()[:2000]
    water.refresh_from_db()
    assert water.closing_time == dt.time(19, 30)

    refused = client.post(url, _business_form(water, "05:00"))
    assert refused.status_code == 200 and "12:00 or later" in refused.content.decode()
    water.refresh_from_db()
    assert water.closing_time == dt.time(19, 30)

    # another business's page is not his
    other = reverse("admin:tenancy_business_change", args=[laundry.pk])
    assert client.post(other, _business_form(laundry, "18:00")).status_code in (302, 403, 404)
    laundry.refresh_from_db()
    assert laundry.closing_time == dt.time(21, 0)


def test_the_owner_sees_every_closing_time_in_the_list(owner_client: Any, water: Business) -> None:
    Business.objects.filter(pk=water.pk).update(closing_time=dt.time(22, 15))
    page = owner_client.get(reverse("admin:tenancy_business_changelist")).content.decode()
    assert 'data-label="closing time">10:15 p.m.</td>' in page


def test_the_sidebar_offers_task_failures_to_those_who_may_read_them(water: Business, owner: Any) -> None:
    def offered(user: Any) -> bool:
        request = RequestFactory().get("/")
        request.user = user
        [item] = [i for g in sidebar_navigation(request) for i in g["items"] if i["title"] == "Task failures"]
        return bool(item["permission"](request))

    assert offered(owner)
    assert not offered(staff_with_perms(water, ["jobs.view_taskevent"], username="wanjiru"))
