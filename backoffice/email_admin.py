"""The owner's emails in the admin: who gets the daily and weekly emails and when, and the email log.

Only the owner (a superuser, or tenancy.view_all_businesses) sees either page, whatever model rights
a staff member holds: the emails carry every business's figures. Changing an owner email needs its
change right; "Send again" the custom backoffice.resend_email; the attachment is served by a view
that asks the same. Nothing here writes a row itself: each save or action calls one service.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin
from unfold.contrib.filters.admin import ChoicesDropdownFilter, RangeDateFilter
from unfold.decorators import action, display

from backoffice.emails import EmailError, recipients_validate
from backoffice.models import EmailLog, EmailState, OwnerEmail, OwnerEmailKind
from backoffice.owner_emails import (
    email_send_again,
    owner_email_schedule_text,
    owner_email_test_send,
    owner_email_update,
)
from tenancy.scoping import sees_all_businesses

STATE_LABELS = {
    EmailState.QUEUED: "info",
    EmailState.RETRYING: "warning",
    EmailState.SENT: "success",
    EmailState.FAILED: "danger",
}


class OwnerOnlyAdmin(ModelAdmin):  # type: ignore[type-arg]
    """Every right of the model also needs "sees every business"."""

    def _owner(self, request: HttpRequest) -> bool:
        return sees_all_businesses(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._owner(request) and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owner(request) and super().has_view_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owner(request) and super().has_change_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows are seeded (owner emails) or written by the senders (the log)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An owner email is one of two fixed rows; a log row is the record that its period was sent
        # (deleting it would send that email again).
        return False


class OwnerEmailForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = OwnerEmail
        fields = ["enabled", "recipients", "send_time", "weekday"]

    def clean_recipients(self) -> str:
        """Every address checked here, so a typo is a form error rather than a bounce at 06:30."""
        return "\n".join(recipients_validate(self.cleaned_data.get("recipients", "")))


@admin.register(OwnerEmail)
class OwnerEmailAdmin(OwnerOnlyAdmin):
    form = OwnerEmailForm
    list_display = ["__str__", "enabled", "schedule", "recipients_display", "last_email"]
    actions = ["send_test"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["enabled", "recipients", "send_time"]
        if obj is None or obj.kind == OwnerEmailKind.WEEKLY:
            fields.append("weekday")
        return fields

    @display(description="When")
    def schedule(self, obj: OwnerEmail) -> str:
        return owner_email_schedule_text(obj)

    @display(description="Recipients")
    def recipients_display(self, obj: OwnerEmail) -> str:
        return ", ".join(obj.recipients.split()) or "nobody yet"

    @display(description="Last email")
    def last_email(self, obj: OwnerEmail) -> str:
        log = EmailLog.objects.filter(kind=obj.kind).order_by("-created_at", "-id").first()
        if log is None:
            return "-"
        url = reverse("admin:backoffice_emaillog_change", args=[log.pk])
        return format_html('<a href="{}">{}: {}</a>', url, log.period, log.get_state_display())

    def save_model(self, request: HttpRequest, obj: OwnerEmail, form: Any, change: bool) -> None:
        data = form.cleaned_data
        owner_email_update(
            config=obj,
            enabled=data["enabled"],
            recipients=data["recipients"],
            send_time=data["send_time"],
            weekday=data.get("weekday", obj.weekday),
        )

    @action(description="Send a test email", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[OwnerEmail]) -> None:
        for config in queryset.order_by("kind"):
            try:
                log = owner_email_test_send(config=config, acting_user=request.user)
            except EmailError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            url = reverse("admin:backoffice_emaillog_change", args=[log.pk])
            self.message_user(
                request,
                format_html(
                    'Test email queued to {} (<a href="{}">its fate in the email log</a>).', log.recipients, url
                ),
                messages.SUCCESS,
            )


@admin.register(EmailLog)
class EmailLogAdmin(OwnerOnlyAdmin):
    list_display = [
        "created_at",
        "kind",
        "period",
        "subject",
        "state_display",
        "attempts",
        "error_display",
        "sent_at",
        "attachment_link",
    ]
    list_display_links = ["created_at", "subject"]
    list_filter = [("state", ChoicesDropdownFilter), ("kind", ChoicesDropdownFilter), ("created_at", RangeDateFilter)]
    list_filter_submit = True
    search_fields = ["subject", "period", "recipients"]
    fields = [
        "kind",
        "period",
        "subject",
        "recipients",
        "state_display",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
        "attachment_link",
        "body_display",
    ]
    readonly_fields = fields
    actions = ["send_again"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the senders write the log; people read it and send a failed email again

    @display(description="State", label=STATE_LABELS)
    def state_display(self, obj: EmailLog) -> str:
        return obj.state

    @display(description="Last error")
    def error_display(self, obj: EmailLog) -> str:
        return obj.last_error[:120] + ("..." if len(obj.last_error) > 120 else "")

    @display(description="Attachment")
    def attachment_link(self, obj: EmailLog) -> str:
        if obj.attachment_deleted_at is not None:
            return "deleted by the clean-up"
        if not obj.attachment:
            return "-"
        url = reverse("admin:backoffice_emaillog_attachment", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.attachment.name.rsplit("/", 1)[-1])

    @display(description="Body")
    def body_display(self, obj: EmailLog) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', obj.body)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return self._owner(request) and bool(request.user.has_perm("backoffice.resend_email"))

    @action(description="Send selected failed emails again", permissions=["resend"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[EmailLog]) -> None:
        done, refused = [], []
        for log in queryset.order_by("pk"):
            try:
                email_send_again(email_id=log.pk)
                done.append(f"#{log.pk}")
            except EmailError as exc:
                refused.append(str(exc))
        if done:
            self.message_user(request, f"Queued again: {', '.join(done)}.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/attachment/",
                self.admin_site.admin_view(self.attachment_view),
                name="backoffice_emaillog_attachment",
            ),
            *super().get_urls(),
        ]

    def attachment_view(self, request: HttpRequest, object_id: int) -> FileResponse:
        """The attachment, to the owner only (it holds every business's figures); never public."""
        log = self.get_object(request, str(object_id))
        if log is None or not self.has_view_permission(request, log) or not log.attachment:
            raise Http404("No such attachment.")
        try:
            handle = log.attachment.open("rb")
        except FileNotFoundError as exc:
            raise Http404("The file is gone.") from exc
        return FileResponse(handle, as_attachment=True, filename=log.attachment.name.rsplit("/", 1)[-1])
