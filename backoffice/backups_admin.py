"""The Backups page: every backup with its proof, read-only, and "Back up now" (backoffice.run_backup).

A backup holds every business's books, so the page is the owner's: it needs "view backup" and the sight
of every business (tenancy.scoping.sees_all_businesses), whatever else a staff member was granted.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince
from unfold.admin import ModelAdmin
from unfold.contrib.filters.admin import ChoicesDropdownFilter
from unfold.decorators import action, display

from backoffice.backups import backup_enqueue, backup_status
from backoffice.models import Backup, BackupState, VerifyState
from tenancy.scoping import sees_all_businesses

STATE_LABELS = {BackupState.RUNNING: "warning", BackupState.SUCCEEDED: "success", BackupState.FAILED: "danger"}
VERIFY_LABELS = {VerifyState.PENDING: "info", VerifyState.VERIFIED: "success", VerifyState.FAILED: "danger"}


@admin.register(Backup)
class BackupAdmin(ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "started_display",
        "state_display",
        "tier",
        "size_display",
        "duration_display",
        "sha_short",
        "verify_display",
        "offsite_display",
        "age_display",
    ]
    list_filter = [("state", ChoicesDropdownFilter), ("verify_state", ChoicesDropdownFilter), "tier"]
    list_filter_submit = True
    list_select_related = ["requested_by"]
    list_before_template = "admin/backoffice/backup/status.html"
    actions_list = ["back_up_now"]
    fieldsets = [
        (None, {"fields": ["state", "tier", "started_at", "finished_at", "duration_seconds", "requested_by"]}),
        (
            "Files",
            {"fields": ["database_file", "media_file", "size_display", "sha256", "media_sha256", "files_deleted_at"]},
        ),
        ("Restore check", {"fields": ["verify_state", "verified_at", "verify_seconds", "verify_message"]}),
        ("Ledger heads and rows in the dump", {"fields": ["heads_table", "counts_table"]}),
        ("Off-site", {"fields": ["offsite_location", "offsite_error"]}),
        ("Errors", {"fields": ["error", "traceback"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [name for _title, options in self.fieldsets for name in options["fields"]]

    # Rows are written by the backup only; people read them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return sees_all_businesses(request.user) and super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_run_backup_permission(self, request: HttpRequest) -> bool:
        return sees_all_businesses(request.user) and bool(request.user.has_perm("backoffice.run_backup"))

    @display(description="Started", ordering="started_at")
    def started_display(self, obj: Backup) -> str:
        return timezone.localtime(obj.started_at).strftime("%d %b %Y %H:%M")

    @display(description="State", label=STATE_LABELS)
    def state_display(self, obj: Backup) -> str:
        return obj.state

    @display(description="Size", ordering="size_bytes")
    def size_display(self, obj: Backup) -> str:
        if obj.size_bytes is None:
            return "-"
        return str(filesizeformat(obj.size_bytes)) + (" (rotated away)" if obj.files_deleted_at else "")

    @display(description="Duration")
    def duration_display(self, obj: Backup) -> str:
        return f"{obj.duration_seconds:.0f} s" if obj.duration_seconds is not None else "-"

    @display(description="SHA-256")
    def sha_short(self, obj: Backup) -> str:
        return obj.sha256[:12] if obj.sha256 else "-"

    @display(description="Restore check", label=VERIFY_LABELS)
    def verify_display(self, obj: Backup) -> str:
        return obj.verify_state

    @display(description="Off-site")
    def offsite_display(self, obj: Backup) -> str:
        if obj.offsite_error:
            return "failed"
        return "copied" if obj.offsite_location else "-"

    @display(description="Age")
    def age_display(self, obj: Backup) -> str:
        return timesince(obj.started_at)

    @display(description="Ledger heads")
    def heads_table(self, obj: Backup) -> str:
        if not obj.ledger_heads:
            return "-"
        rows = sorted(obj.ledger_heads.items(), key=lambda kv: int(kv[0]))
        return format_html(
            "<table><tr><th>Business</th><th>Last entry</th><th>Seal</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{} ({})</td><td>no. {}</td><td><code>{}</code></td></tr>",
                ((h.get("business", ""), b, h.get("number"), h.get("hash")) for b, h in rows),
            ),
        )

    @display(description="Rows per table")
    def counts_table(self, obj: Backup) -> str:
        if not obj.row_counts:
            return "-"
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td></tr>", ((t, f"{int(n):,}") for t, n in sorted(obj.row_counts.items()))
            ),
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The status line above the list (list_before_template): what the morning email says."""
        return super().changelist_view(request, {**(extra_context or {}), "backup_status": backup_status()})

    @action(description="Back up now", url_path="back-up-now", permissions=["run_backup"], icon="backup")
    def back_up_now(self, request: HttpRequest) -> HttpResponse:
        """Asks to confirm (GET), queues the backup and its restore check on the reports worker (POST)."""
        changelist = reverse("admin:backoffice_backup_changelist")
        if request.method == "POST":
            backup_enqueue(requested_by_id=request.user.pk)
            self.message_user(
                request,
                "Backup queued: it appears here when the reports worker starts it, and is restore-checked after.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(changelist)
        running = Backup.objects.filter(state=BackupState.RUNNING).exists()
        return TemplateResponse(
            request,
            "admin/backoffice/backup/back_up_now.html",
            {
                **self.admin_site.each_context(request),
                "title": "Back up now",
                "opts": self.model._meta,
                "status": backup_status(),
                "running": running,
                "changelist_url": changelist,
            },
        )
