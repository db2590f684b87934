"""The owner emails and the email log in the admin: only the owner (a superuser, or a user who sees
every business) opens them, whatever model rights a staff member was given; a bad address is a form
error; "Send a test email" and "Send again" name their rights and are refused without them; the
attachment is served to the owner only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.urls import reverse

from backoffice.emails import Attachment, email_queue
from backoffice.models import EmailKind, EmailLog, EmailState, OwnerEmail
from backoffice.navigation import sidebar_navigation
from backoffice.owner_emails import owner_emails_ensure
from tenancy.models import Business
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

PDF = b"%PDF-1.4 every business's figures"
EMAIL_PERMS = [
    "backoffice.view_owneremail",
    "backoffice.change_owneremail",
    "backoffice.view_emaillog",
    "backoffice.resend_email",
]
OWNER_EMAILS = reverse("admin:backoffice_owneremail_changelist")
EMAIL_LOG = reverse("admin:backoffice_emaillog_changelist")


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


@pytest.fixture
def daily() -> OwnerEmail:
    owner_emails_ensure()
    return OwnerEmail.objects.get(kind="daily")


def failed_email(period: str = "2026-11-29", **kwargs: Any) -> EmailLog:
    log, _ = email_queue(
        kind="daily",
        period=period,
        subject=f"Daily summary {period}",
        recipients=[],
        body="Maji Safi Water\n  Total takings: KES 12,000.00\n",
        attachment=Attachment(f"daily-summary-all-{period}.pdf", PDF),
        **kwargs,
    )
    assert log.state == EmailState.FAILED
    return log


def _form(config: OwnerEmail, **changes: Any) -> dict[str, Any]:
    data = {
        "enabled": "on" if config.enabled else "",
        "recipients": config.recipients,
        "send_time": config.send_time.strftime("%H:%M"),
        "weekday": str(config.weekday),
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


# ------------------------------------------------------------------------------------ owner emails


def test_the_owner_sets_recipients_and_time_and_a_bad_address_is_a_form_error(
    owner_client: Client, daily: OwnerEmail
) -> None:
    page = owner_client.get(OWNER_EMAILS)
    assert page.status_code == 200 and "Daily summary" in page.content.decode()
    assert "daily at 06:30 (Nairobi)" in page.content.decode()
    url = reverse("admin:backoffice_owneremail_change", args=[daily.pk])
    form = owner_client.get(url)
    assert form.status_code == 200 and 'name="recipients"' in form.content.decode()
    assert 'name="weekday"' not in form.content.decode()  # the daily email has no weekday

    refused = owner_client.post(url, _form(daily, recipients="owner@example.com\nowner-at-example.com"))
    assert refused.status_code == 200
    assert "Not an email address: owner-at-example.com" in refused.content.decode()
    daily.refresh_from_db()
    assert daily.recipients == ""

    saved = owner_client.post(
        url, _form(daily, recipients="owner@example.com, partner@example.co.ke", send_time="05:45")
    )
    assert saved.status_code == 302
    daily.refresh_from_db()
    assert (daily.recipients, daily.send_time) == ("owner@example.com\npartner@example.co.ke", dt.time(5, 45))
    weekly = OwnerEmail.objects.get(kind="weekly")
    weekly_form = owner_client.get(reverse("admin:backoffice_owneremail_change", args=[weekly.pk]))
    assert 'name="weekday"' in weekly_form.content.decode()
    # Two fixed rows: none added or deleted.
    assert owner_client.get(reverse("admin:backoffice_owneremail_add")).status_code == 403
    assert (
        owner_client.post(reverse("admin:backoffice_owneremail_delete", args=[daily.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert OwnerEmail.objects.count() == 2


def test_send_a_test_email_queues_one_to_the_recipients_and_needs_them(owner_client: Client, daily: OwnerEmail) -> None:
    action = {"action": "send_test", "_selected_action": [daily.pk], "index": "0"}
    page = owner_client.post(OWNER_EMAILS, action, follow=True)
    assert "no recipients to send a test to" in page.content.decode()
    assert not EmailLog.objects.exists()

    OwnerEmail.objects.filter(pk=daily.pk).update(recipients="owner@example.com")
    page = owner_client.post(OWNER_EMAILS, action, follow=True)
    assert "Test email queued to owner@example.com" in page.content.decode()
    [log] = EmailLog.objects.all()
    assert (log.kind, log.recipients, log.state) == (EmailKind.TEST, "owner@example.com", EmailState.QUEUED)
    assert "daily at 06:30 (Nairobi)" in log.body and "owner" in log.body
    owner_client.post(OWNER_EMAILS, action)  # each click is one more test email
    assert EmailLog.objects.filter(kind=EmailKind.TEST).count() == 2


# ------------------------------------------------------------------------------------ the log


def test_the_email_log_lists_filters_and_shows_an_email_read_only(owner_client: Client) -> None:
    failed = failed_email()
    sent, _ = email_queue(
        kind="alert", period="disk:1", subject="Disk almost full", recipients=["a@example.com"], body=""
    )
    EmailLog.objects.filter(pk=sent.pk).update(state=EmailState.SENT)
    page = owner_client.get(EMAIL_LOG).content.decode()
    assert "Daily summary 2026-11-29" in page and "Disk almost full" in page and "No recipients" in page
    only_failed = owner_client.get(EMAIL_LOG, {"state": "failed"}).content.decode()
    assert "Daily summary 2026-11-29" in only_failed and "Disk almost full" not in only_failed
    detail = owner_client.get(reverse("admin:backoffice_emaillog_change", args=[failed.pk]))
    assert detail.status_code == 200 and "Total takings: KES 12,000.00" in detail.content.decode()
    before = EmailLog.objects.get(pk=failed.pk).subject
    owner_client.post(reverse("admin:backoffice_emaillog_change", args=[failed.pk]), {"subject": "changed"})
    assert EmailLog.objects.get(pk=failed.pk).subject == before
    assert owner_client.get(reverse("admin:backoffice_emaillog_add")).status_code == 403
    delete = owner_client.post(reverse("admin:backoffice_emaillog_delete", args=[failed.pk]), {"post": "yes"})
    assert delete.status_code == 403 and EmailLog.objects.filter(pk=failed.pk).exists()


def test_send_again_queues_a_failed_email_to_the_current_recipients(owner_client: Client, daily: OwnerEmail) -> None:
    log = failed_email()
    sent = failed_email("2026-11-28")
    EmailLog.objects.filter(pk=sent.pk).update(state=EmailState.SENT)
    OwnerEmail.objects.filter(pk=daily.pk).update(recipients="owner@example.com")
    page = owner_client.post(
        EMAIL_LOG, {"action": "send_again", "_selected_action": [log.pk, sent.pk], "index": "0"}, follow=True
    ).content.decode()
    assert f"Queued again: #{log.pk}." in page and "is sent, not failed" in page
    log.refresh_from_db()
    assert (log.state, log.recipients, log.attempts, log.last_error) == (EmailState.QUEUED, "owner@example.com", 0, "")


def test_the_owner_downloads_the_attachment(owner_client: Client) -> None:
    log = failed_email()
    url = reverse("admin:backoffice_emaillog_attachment", args=[log.pk])
    assert url in owner_client.get(EMAIL_LOG).content.decode()
    response = owner_client.get(url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == PDF  # type: ignore[attr-defined]
    assert "daily-summary-all-2026-11-29.pdf" in response["Content-Disposition"]
    (Path(log.attachment.path)).unlink()
    assert owner_client.get(url).status_code == 404


# ------------------------------------------------------------------------------------ who


def test_staff_with_every_email_right_still_cannot_open_either_page_or_the_attachment(
    water: Business, daily: OwnerEmail
) -> None:
    log = failed_email()
    staff = staff_with_perms(water, EMAIL_PERMS)
    client = login(staff)
    urls = [
        OWNER_EMAILS,
        reverse("admin:backoffice_owneremail_change", args=[daily.pk]),
        EMAIL_LOG,
        reverse("admin:backoffice_emaillog_change", args=[log.pk]),
    ]
    for url in urls:
        assert client.get(url).status_code in (302, 403), url
    attachment = client.get(reverse("admin:backoffice_emaillog_attachment", args=[log.pk]))
    assert attachment.status_code == 404 and not hasattr(attachment, "streaming_content")
    # Nor through the actions or the change form.
    client.post(
        reverse("admin:backoffice_owneremail_change", args=[daily.pk]), _form(daily, recipients="x@evil.example")
    )
    client.post(OWNER_EMAILS, {"action": "send_test", "_selected_action": [daily.pk], "index": "0"})
    client.post(EMAIL_LOG, {"action": "send_again", "_selected_action": [log.pk], "index": "0"})
    daily.refresh_from_db()
    log.refresh_from_db()
    assert daily.recipients == "" and log.state == EmailState.FAILED and EmailLog.objects.count() == 1
    body = client.get(reverse("admin:index")).content.decode()
    assert "Email log" not in body and "Owner emails" not in body


def test_a_user_who_sees_every_business_needs_each_right_too(water: Business, daily: OwnerEmail) -> None:
    log = failed_email()
    OwnerEmail.objects.filter(pk=daily.pk).update(recipients="owner@example.com")
    viewer = staff_with_perms(
        water, ["tenancy.view_all_businesses", "backoffice.view_owneremail", "backoffice.view_emaillog"], username="v"
    )
    client = login(viewer)
    assert client.get(OWNER_EMAILS).status_code == 200 and client.get(EMAIL_LOG).status_code == 200
    assert client.get(reverse("admin:backoffice_emaillog_attachment", args=[log.pk])).status_code == 200
    # Without the change right: no test email; without resend_email: no "Send again".
    client.post(OWNER_EMAILS, {"action": "send_test", "_selected_action": [daily.pk], "index": "0"})
    client.post(EMAIL_LOG, {"action": "send_again", "_selected_action": [log.pk], "index": "0"})
    log.refresh_from_db()
    assert log.state == EmailState.FAILED and EmailLog.objects.count() == 1

    partner = staff_with_perms(water, ["tenancy.view_all_businesses", *EMAIL_PERMS], username="partner")
    client = login(partner)
    client.post(OWNER_EMAILS, {"action": "send_test", "_selected_action": [daily.pk], "index": "0"})
    assert EmailLog.objects.filter(kind=EmailKind.TEST).count() == 1
    client.post(EMAIL_LOG, {"action": "send_again", "_selected_action": [log.pk], "index": "0"})
    log.refresh_from_db()
    assert log.state == EmailState.QUEUED


def test_the_sidebar_offers_the_email_pages_to_the_owner_only(water: Business, owner: User) -> None:
    request = RequestFactory().get("/")
    staff = staff_with_perms(water, EMAIL_PERMS)
    for user, offered in ((owner, True), (staff, False)):
        request.user = User.objects.get(pk=user.pk)
        items = {i["title"]: i for group in sidebar_navigation(request) for i in group["items"]}
        assert items["Owner emails"]["permission"](request) is offered
        assert items["Email log"]["permission"](request) is offered
