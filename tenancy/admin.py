"""Businesses and staff assignments (the export action reaches sideways to the jobs, as admin modules may)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from import_export.admin import ImportExportModelAdmin
from unfold.admin import TabularInline
from unfold.contrib.import_export.forms import ExportForm, ImportForm
from unfold.decorators import action

from jobs.services import job_launch
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business, Membership
from tenancy.scoping import BusinessScopedAdmin, CheckedResource, sees_all_businesses


class BusinessResource(CheckedResource):
    """Businesses themselves: only the owner may import them (a staff member could otherwise rename
    or deactivate another business by uploading a file). Exports are scoped by the admin's queryset."""

    def before_save_instance(self, instance: Business, row: Any, **kwargs: Any) -> None:
        user = kwargs.get("user")
        if user is not None and not sees_all_businesses(user):
            raise ValidationError("Only the owner may import businesses.")

    class Meta:
        model = Business
        fields = ("id", "name", "kind", "currency", "timezone", "is_active")
        export_order = fields


class MembershipInline(TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    tab = True


@admin.register(Business)
class BusinessAdmin(BusinessScopedAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    business_lookup = "pk"
    resource_classes = [BusinessResource]
    import_form_class = ImportForm
    export_form_class = ExportForm
    list_display = ["name", "kind", "currency", "timezone", "closing_time", "is_active", "staff_count"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name"]
    readonly_fields = ["currency", "timezone", "created_at"]
    inlines = [MembershipInline]
    actions = ["export_to_excel"]

    def has_import_permission(self, request: HttpRequest) -> bool:
        return sees_all_businesses(request.user) and super().has_import_permission(request)

    @admin.display(description="Staff")
    def staff_count(self, obj: Business) -> int:
        return obj.memberships.count()

    @action(description="Export businesses and staff to Excel (background job)", permissions=["export"])
    def export_to_excel(self, request: HttpRequest, queryset: QuerySet[Business]) -> None:
        """One job per selected business for staff; one job for everything when the owner picks all."""
        if sees_all_businesses(request.user) and queryset.count() == Business.objects.count():
            jobs = [job_launch(kind=EXPORT_BUSINESSES, acting_user=request.user, business=None)]
        else:
            jobs = [job_launch(kind=EXPORT_BUSINESSES, acting_user=request.user, business=b) for b in queryset]
        ids = ", ".join(f"#{j.pk}" for j in jobs)
        self.message_user(request, f"Export queued as job {ids}; follow it under Jobs.", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: Business, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            from accounts.services import chart_ensure_default

            chart_ensure_default(business=obj)  # a new business gets its books at once

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return list(self.inlines) if request.user.has_perm("tenancy.view_membership") else []


@admin.register(Membership)
class MembershipAdmin(BusinessScopedAdmin):
    list_display = ["user", "business", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "user__first_name", "user__last_name", "business__name"]
    autocomplete_fields = ["user"]
