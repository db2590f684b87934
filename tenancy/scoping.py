"""Per-business access: who sees which business, and the admin base class that enforces it.

The owner (a superuser, or a user with `tenancy.view_all_businesses`) sees every business.
A staff member sees and changes only the businesses he has a Membership in: on every list,
filter, search, export, action, change form and object URL of an admin built on
`BusinessScopedAdmin`. Rows outside his businesses do not exist for him (the admin answers an
object URL of another business as "not found").
"""

from __future__ import annotations

import functools
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.admin import (
    AllValuesFieldListFilter,
    FieldListFilter,
    ListFilter,
    RelatedFieldListFilter,
    SimpleListFilter,
)
from django.contrib.admin.utils import get_fields_from_path
from django.core.exceptions import FieldDoesNotExist, ObjectDoesNotExist, ValidationError
from django.db import models
from django.db.models import QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest
from import_export import resources, widgets
from unfold.admin import ModelAdmin
from unfold.contrib.filters.admin import RelatedDropdownFilter

from tenancy.models import Business


def sees_all_businesses(user: Any) -> bool:
    return bool(user.is_active and (user.is_superuser or user.has_perm("tenancy.view_all_businesses")))


def visible_businesses(user: Any) -> QuerySet[Business]:
    """The businesses this user may see, cached on the user object for the request."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return Business.objects.none()
    if sees_all_businesses(user):
        return Business.objects.all()
    return Business.objects.filter(memberships__user=user)


def visible_business_ids(user: Any) -> set[int]:
    cached: set[int] | None = getattr(user, "_visible_business_ids", None)
    if cached is None:
        cached = set(visible_businesses(user).values_list("id", flat=True))
        user._visible_business_ids = cached
    return cached


def _business_id_of(obj: models.Model, lookup: str) -> int | None:
    if lookup == "pk":
        return obj.pk
    *path, last = lookup.split("__")
    value: Any = obj
    for part in path:
        value = getattr(value, part, None)
        if value is None:
            return None
    # `business_id` is on the row itself: no query, and no error for an id that does not exist.
    return getattr(value, f"{last}_id", None)


class BusinessFilter(RelatedDropdownFilter):
    """The business switcher on every scoped list: offers only the businesses the user may see."""

    business_scoped = True

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[tuple[Any, str]]:
        return [(b.pk, b.name) for b in visible_businesses(request.user).order_by("name")]


class ScopedRelatedChoices(RelatedFieldListFilter):
    """A related-field filter that offers only the related rows the user's own rows point to
    (Django's RelatedOnlyFieldListFilter rule, for staff): never a run, till, customer or person
    of a business he does not see. The owner gets the full list."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        if sees_all_businesses(request.user):
            return super().field_choices(field, request, model_admin)
        used = model_admin.get_queryset(request).order_by().values(f"{self.field_path}__pk")
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, limit_choices_to={"pk__in": used}, ordering=ordering)


class ScopedAllValues(AllValuesFieldListFilter):
    """The values of a field across a relation ("run__till__name"), taken from the user's own rows
    instead of every row of the related table."""

    def __init__(
        self, field: Any, request: HttpRequest, params: Any, model: Any, model_admin: Any, field_path: str
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        if not sees_all_businesses(request.user):
            rows = model_admin.get_queryset(request).order_by(field_path).distinct()
            self.lookup_choices = rows.values_list(field_path, flat=True)


_scoped_filter_classes: dict[type[Any], type[Any]] = {}


def _scoped_filter_class(cls: type[Any], field_path: str) -> type[Any] | None:
    """The business-scoped variant of a field list filter class, or None if it needs none."""
    if getattr(cls, "business_scoped", False):
        return None
    if issubclass(cls, RelatedFieldListFilter):
        base: type[Any] = ScopedRelatedChoices
    elif issubclass(cls, AllValuesFieldListFilter) and "__" in field_path:
        base = ScopedAllValues
    else:
        return None
    if cls not in _scoped_filter_classes:
        attrs = {"business_scoped": True, "__module__": __name__}
        _scoped_filter_classes[cls] = type(f"Scoped{cls.__name__}", (base, cls), attrs)
    return _scoped_filter_classes[cls]


def _default_filter_class(model: type[models.Model], field_path: str) -> type[Any] | None:
    """The FieldListFilter class Django would pick for `field_path` (same rules, same order)."""
    try:
        field = get_fields_from_path(model, field_path)[-1]
    except (FieldDoesNotExist, LookupError):
        return None
    for test, cls in FieldListFilter._field_list_filters:  # type: ignore[attr-defined]
        if test(field):
            return cls  # type: ignore[no-any-return]
    return None


def scope_list_filter(model: type[models.Model], item: Any) -> Any:
    """`item` of a list_filter with any related-field choices limited to the user's businesses."""
    if isinstance(item, str):
        cls = _default_filter_class(model, item)
        scoped = _scoped_filter_class(cls, item) if cls is not None else None
        return (item, scoped) if scoped is not None else item
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], type):
        path, cls = item
        if issubclass(cls, ListFilter) and not issubclass(cls, SimpleListFilter):
            scoped = _scoped_filter_class(cls, path)
            return (path, scoped) if scoped is not None else item
    return item


class BusinessScopedAdmin(ModelAdmin):
    """An Unfold ModelAdmin whose rows belong to a business through `business_lookup`.

    `business_lookup` is the ORM path from the model to Business ("business",
    "entry__business", ...). Rows with no business (global rows) are shown to the owner only.
    """

    business_lookup: str = "business"

    # The queryset is the one place every list, search, filter, export, action and object URL
    # goes through, so scoping it scopes them all.
    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        if sees_all_businesses(request.user):
            return qs
        return qs.filter(**{f"{self.business_lookup}__in": visible_business_ids(request.user)})

    def get_list_filter(self, request: HttpRequest) -> Any:
        """The business switcher first, and every related-field filter limited to the user's
        businesses (a plain "run" or "till" would list every business's rows)."""
        declared = list(super().get_list_filter(request))
        filters = [scope_list_filter(self.model, item) for item in declared]
        if self.business_lookup != "pk" and self.business_lookup not in declared:
            filters.insert(0, (self.business_lookup, BusinessFilter))
        return filters

    def has_import_permission(self, request: HttpRequest) -> bool:
        """An import creates and overwrites rows: it needs both the add and the change right
        (django-import-export alone asks for one code, and by default for nothing)."""
        return self.has_add_permission(request) and self.has_change_permission(request)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> ModelChoiceField | None:
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is None or sees_all_businesses(request.user):
            return field
        related = db_field.related_model
        allowed = visible_business_ids(request.user)
        if related is Business:
            field.queryset = field.queryset.filter(pk__in=allowed)
        elif any(f.name == "business" for f in related._meta.get_fields()):
            field.queryset = field.queryset.filter(business__in=allowed)
        return field

    def _owns(self, request: HttpRequest, obj: models.Model | None) -> bool:
        if obj is None or sees_all_businesses(request.user):
            return True
        business_id = _business_id_of(obj, self.business_lookup)
        return business_id is not None and business_id in visible_business_ids(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self._owns(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._owns(request, obj)


def business_path_of(model: type[models.Model]) -> str | None:
    """The ORM path from `model` to its business: "pk" for Business itself, "business" for a row
    with a business column, the `business_lookup` of its scoped admin otherwise; None for a model
    that belongs to no business (a user, a content type)."""
    if model is Business:
        return "pk"
    if any(f.name == "business" and f.is_relation for f in model._meta.get_fields()):
        return "business"
    from django.contrib import admin

    model_admin = admin.site._registry.get(model)
    if isinstance(model_admin, BusinessScopedAdmin):
        return model_admin.business_lookup
    return None


def foreign_rows_check(instance: models.Model, business_id: int | None) -> None:
    """Refuse `instance` if one of its foreign keys names a row of a business other than
    `business_id` (an imported opening stock of business A for an item of business B).

    The ids are resolved with the unscoped default manager, as an import does, so this is the
    one place that keeps a row and what it points to in the same business.
    """
    errors: dict[str, str] = {}
    for field in instance._meta.concrete_fields:
        if not field.many_to_one and not field.one_to_one:
            continue
        related_id = getattr(instance, field.attname)
        if related_id is None:
            continue
        related = field.related_model
        if not isinstance(related, type):
            continue  # resolved by the time an import runs; a lazy "self" or "app.Model" never is here
        path = business_path_of(related)
        if path is None:
            continue
        if path == "pk":
            owner = related_id
        else:
            owner = related._default_manager.filter(pk=related_id).values_list(path, flat=True).first()
        if owner != business_id:
            errors[field.name] = f"{related._meta.verbose_name} {related_id} does not belong to business {business_id}."
    if errors:
        raise ValidationError(errors)


class NumberWidget(widgets.DecimalWidget):
    """A decimal cell, or a ValueError naming it (django-import-export then shows it against its
    column; its own widget let Decimal's InvalidOperation through, which the import page showed as
    "[<class 'decimal.ConversionSyntax'>]", naming neither the column nor the value)."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> Decimal | None:
        try:
            number = super().clean(value, row, **kwargs)
        except (InvalidOperation, TypeError, ValueError):
            number = Decimal("NaN")
        if number is not None and not number.is_finite():
            raise ValueError(f"{str(value)[:40]!r} is not a number")
        return number


class _NoNulText:
    """A text cell, or a ValueError naming its column: PostgreSQL text cannot hold NUL (0x00), and
    the import page showed its DataError for the whole line."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("a text cannot contain the NUL character (0x00)")
        return super().clean(value, row, **kwargs)  # type: ignore[misc]


class TextWidget(_NoNulText, widgets.CharWidget):
    """A CharField cell without NUL."""


class PlainTextWidget(_NoNulText, widgets.Widget):
    """A TextField cell (django-import-export's plain widget) without NUL."""


class WholeNumberWidget(widgets.IntegerWidget):
    """An integer cell (an id), or a ValueError naming it (not InvalidOperation or OverflowError)."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> int | None:
        try:
            return super().clean(value, row, **kwargs)  # type: ignore[no-any-return]
        except (ArithmeticError, TypeError, ValueError):
            raise ValueError(f"{str(value)[:40]!r} is not a whole number") from None


class RowWidget(widgets.ForeignKeyWidget):
    """A foreign key cell, or a ValueError naming it: "there is no item '999'" against its column,
    not "Item matching query does not exist." for the whole line."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> Any:
        try:
            return super().clean(value, row, **kwargs)
        except ObjectDoesNotExist:
            raise ValueError(f"there is no {self.model._meta.verbose_name} {str(value)[:40]!r}") from None


class CheckedResource(resources.ModelResource):
    """An import resource whose every bad cell is an error against its column, before anything is
    saved: the model's validation runs (a text too long, a value missing, a choice or a number its
    column cannot hold), and numbers, ids and foreign keys that cannot be read say which cell.
    Without it the import page showed PostgreSQL's errors ("value too long for type character
    varying(20)") and Python's ("[<class 'decimal.ConversionSyntax'>]") for the whole line."""

    class Meta:
        clean_model_instances = True  # inherited by the resources below (django-import-export merges Meta)

    @classmethod
    def widget_from_django_field(cls, f: Any, default: Any = widgets.Widget) -> Any:
        widget = super().widget_from_django_field(f, default)
        if widget is widgets.DecimalWidget:
            return NumberWidget
        if widget is widgets.IntegerWidget:
            return WholeNumberWidget
        if widget is widgets.CharWidget:
            return TextWidget
        if widget is widgets.Widget and isinstance(f, models.TextField):
            return PlainTextWidget
        return widget

    @classmethod
    def get_fk_widget(cls, field: Any) -> Any:
        widget = super().get_fk_widget(field)
        return functools.partial(RowWidget, *widget.args, **widget.keywords)


class BusinessScopedResource(CheckedResource):
    """An import-export resource that lets a user import only into businesses he may see.

    Existing rows of other businesses cannot be overwritten (even by id), new or updated rows
    cannot be put in another business, and a row cannot point to a row of another business (an
    item, a supplier, a customer: every foreign key to something that has a business). The row is
    refused with a validation error, which the import preview shows against that row.
    """

    business_lookup: str = "business"

    def before_save_instance(self, instance: Any, row: Any, **kwargs: Any) -> None:
        user = kwargs.get("user")
        business_id = _business_id_of(instance, self.business_lookup)
        if user is not None and not sees_all_businesses(user):
            allowed = visible_business_ids(user)
            if business_id not in allowed:
                raise ValidationError(f"You may not import rows for business {business_id}.")
            if instance.pk:
                stored = type(instance)._default_manager.filter(pk=instance.pk).first()
                if stored is not None and _business_id_of(stored, self.business_lookup) not in allowed:
                    raise ValidationError(f"Row {instance.pk} belongs to a business you cannot change.")
        # For the owner too: a row pointing into another business corrupts both businesses' books.
        if self.business_lookup != "pk":
            foreign_rows_check(instance, business_id)
