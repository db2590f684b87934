"""Alert rules (editable) and alerts (read-only) in the admin: the owner's pages.

Both watch the whole system, so only someone who sees every business (the owner) may open them,
whatever model permissions he holds; changing a rule also needs backoffice.change_alertrule.
Alerts are written only by the alert check (backoffice.alerts.alerts_check).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin
from unfold.decorators import display

from backoffice.alerts import RULE_SPECS, alert_rule_validate
from backoffice.models import Alert, AlertCheck, AlertRule
from tenancy.scoping import sees_all_businesses


def _help() -> str:
    lines = [f"{kind.label} - {RULE_SPECS[kind].unit}" for kind in AlertCheck]
    return "Per check: " + "; ".join(lines) + "."


class AlertRuleForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = AlertRule
        fields = ["name", "check_kind", "enabled", "threshold", "target", "email_every_minutes", "recipients"]
        help_texts = {
            "threshold": _help(),
            "target": "Queue checks: a queue (payments, default, reports), empty for every queue. Worker memory "
            "and restarts: the start of a worker's name (e.g. 'reports'), empty for every worker. Others: empty.",
        }

    def clean_email_every_minutes(self) -> int:
        value = int(self.cleaned_data["email_every_minutes"])
        if value < 1:
            raise forms.ValidationError("At least one minute.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "check_kind" in data:
            errors = alert_rule_validate(
                check_kind=data["check_kind"],
                threshold=data.get("threshold"),
                target=data.get("target") or "",
                recipients=data.get("recipients") or "",
            )
            for name, message in errors.items():
                if name in self.fields and name not in self.errors:
                    self.add_error(name, message)
        return data


class OwnerOnlyAdmin(ModelAdmin):  # type: ignore[type-arg]
    """Model permissions, and the owner's "sees every business" on top."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return sees_all_businesses(request.user) and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return sees_all_businesses(request.user) and super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return sees_all_businesses(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return sees_all_businesses(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return sees_all_businesses(request.user) and super().has_delete_permission(request, obj)


@admin.register(AlertRule)
class AlertRuleAdmin(OwnerOnlyAdmin):
    form = AlertRuleForm
    list_display = ["name", "check_kind", "enabled", "threshold_display", "target", "email_every_minutes", "open_alert"]
    list_filter = ["enabled", "check_kind"]
    search_fields = ["name"]
    readonly_fields = ["updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        return super().get_queryset(request).prefetch_related("alerts")

    @display(description="Threshold")
    def threshold_display(self, rule: AlertRule) -> str:
        spec = RULE_SPECS.get(rule.check_kind)
        if spec is None or spec.minimum == spec.maximum:
            return "-"
        return f"{rule.threshold.normalize():f} {spec.unit}"

    @display(description="Firing now")
    def open_alert(self, rule: AlertRule) -> str:
        current = [a for a in rule.alerts.all() if a.resolved_at is None]
        return current[0].message if current else ""


@admin.register(Alert)
class AlertAdmin(OwnerOnlyAdmin):
    list_display = ["rule", "message", "value", "first_seen_at", "last_seen_at", "resolved_at", "last_emailed_at"]
    list_filter = [("resolved_at", admin.EmptyFieldListFilter), "rule"]
    list_select_related = ["rule"]
    search_fields = ["message", "rule__name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
