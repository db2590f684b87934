"""What the operations admins share: scoped inlines, read-only posted documents, running a service
per selected row with the refusals shown to the person."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest
from unfold.admin import TabularInline
from unfold.contrib.import_export.forms import ExportForm, ImportForm

from accounts.exceptions import LedgerError
from integrations.mpesa.exceptions import MpesaError
from operations.exceptions import OperationError
from tenancy.scoping import BusinessScopedAdmin, BusinessScopedResource, sees_all_businesses, visible_business_ids

REFUSALS = (OperationError, LedgerError, MpesaError)


class ScopedInline(TabularInline):  # type: ignore[type-arg]
    """An inline whose dropdowns offer only rows of the businesses the user may see."""

    extra = 1

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> ModelChoiceField | None:
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is None or sees_all_businesses(request.user):
            return field
        if any(f.name == "business" for f in db_field.related_model._meta.get_fields()):
            field.queryset = field.queryset.filter(business__in=visible_business_ids(request.user))
        return field


class DraftInline(ScopedInline):
    """Lines of a document that can be edited while it is a draft only."""

    def _is_draft(self, obj: Any) -> bool:
        return obj is None or obj.status == "draft"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._is_draft(obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._is_draft(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._is_draft(obj)


class DocumentAdmin(BusinessScopedAdmin):
    """A document that is drafted in the admin and posted by a service: read-only once posted."""

    draft_statuses: tuple[str, ...] = ("draft",)
    list_per_page = 50

    def _is_draft(self, obj: Any) -> bool:
        return obj is None or obj.status in self.draft_statuses

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._is_draft(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._is_draft(obj)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change and hasattr(obj, "created_by_id") and obj.created_by_id is None:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def run_service(
        self, request: HttpRequest, queryset: QuerySet[Any], service: Callable[[Any], Any], done: str
    ) -> None:
        """Call `service(row)` for each selected row; refusals are shown, the others go on."""
        succeeded = 0
        for obj in queryset:
            try:
                service(obj)
            except REFUSALS as exc:
                self.message_user(request, f"{obj}: {exc}", messages.ERROR)
            else:
                succeeded += 1
        if succeeded:
            self.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)


class ReadOnlyAdmin(BusinessScopedAdmin):
    """Rows written only by services (stock levels, movements, the customer ledger)."""

    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ImportExportForms:
    import_form_class = ImportForm
    export_form_class = ExportForm


class ScopedResource(BusinessScopedResource):
    """Import-export of business rows; rows already posted cannot be overwritten by an import."""

    def before_save_instance(self, instance: Any, row: Any, **kwargs: Any) -> None:
        super().before_save_instance(instance, row, **kwargs)
        if instance.pk and hasattr(instance, "status"):
            stored = type(instance)._default_manager.filter(pk=instance.pk).values_list("status", flat=True).first()
            if stored not in (None, "draft"):
                raise ValidationError(f"Row {instance.pk} is posted and cannot be changed by an import.")
