"""Excel exports of what a changelist shows: one generic job kind for every admin that declares columns.

The job's params hold the model label, the changelist's query string (filters, search, ordering,
date drill-down) and the export's options (e.g. an "as of" date). On the worker the handler rebuilds a
GET request for the changelist as the user who launched the job, re-checks that he is still active
staff with the model's view permission, and takes the queryset the changelist itself builds: the
admin's get_queryset (with its business scoping), filters, search and ordering all come from there,
so a forged query string can never reach rows the user cannot see on the page.

The rows are read with the least work per row that still gives what the page shows: when every
column is a field path (or declares the fields its code reads), the changelist's queryset itself is
streamed as `values_list()` tuples, and the lines of each chunk of rows come from one values_list query
on the lines' prefetch queryset; otherwise model instances are streamed with the lines prefetched per
chunk. The workbook is written by jobs.xlsx (a streaming writer: about a microsecond per cell, where
openpyxl's write-only mode takes about ten) into a temporary file kept with `save_result_path`:
memory stays flat whatever the row count.
Totals are computed in Python from the Decimal values written (not Excel formulas): the figure in the
file is the one the database holds, also in viewers that do not compute formulas.

Columns are declared on the admin (jobs.admin_exports.ExcelExportMixin): this module knows no model.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import tempfile
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import label_for_field
from django.db.models import Model, QuerySet
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job
from jobs.registry import JobContext, JobFailed, job_kind
from jobs.xlsx import XlsxColumn, XlsxWriter
from tenancy.scoping import sees_all_businesses, visible_businesses

CHANGELIST_XLSX = "jobs.changelist_xlsx"
# Rows read and written per chunk (the lines of a chunk's rows are one query, held until written):
# 250 keeps a 100,000-line export ~10 MiB smaller than 2,000 did, at no measurable cost in time
# (docs/worker-memory.md, "Reports").
CHUNK_SIZE = 250

# Query parameters of a changelist that are not about which rows it shows.
NOT_FILTERS = {"p", "all", "e", "_popup", "_to_field", "_changelist_filters"}

COLUMN_TYPES = ("text", "date", "datetime", "money", "int", "decimal", "bool")
NUMBER_FORMATS = {
    "date": "dd mmm yyyy",
    "datetime": "dd mmm yyyy hh:mm",
    "money": "#,##0.00",
    "int": "#,##0",
    "decimal": "#,##0.####",
}
DEFAULT_WIDTHS = {"text": 24, "date": 13, "datetime": 18, "money": 15, "int": 10, "decimal": 12, "bool": 8}


@dataclass(frozen=True)
class Column:
    """One column of an export.

    `value` is a field path ("customer__name"; a method at the end is called: "get_status_display")
    or a callable taking the row. `type` decides the cell: dates as dates, timestamps as Nairobi local
    times, money as numbers formatted #,##0.00. `total` adds the column's sum to the bold totals row
    (money, int and decimal columns).

    `reads` names the fields of the row's model that a callable, or a property or method named by
    `value`, reads ("pk", "amount"...): the export can then run it on a light stand-in holding just
    those values instead of loading model instances. A stand-in lacking a field fails loudly.
    """

    header: str
    value: str | Callable[[Any], Any]
    type: str = "text"
    width: float | None = None
    total: bool = False
    reads: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"unknown column type {self.type!r}")
        if self.total and self.type not in ("money", "int", "decimal"):
            raise ValueError(f"column {self.header!r}: only number columns have totals")

    def getter(self) -> Callable[[Any], Any]:
        if callable(self.value):
            return self.value
        parts = self.value.split("__")
        if len(parts) == 1:
            plain = operator.attrgetter(parts[0])

            def get_one(obj: Any) -> Any:
                value = plain(obj)
                return value() if callable(value) else value

            return get_one

        def get_path(obj: Any) -> Any:
            value = obj
            for part in parts:
                if value is None:
                    return None
                value = getattr(value, part)
            return value() if callable(value) else value

        return get_path


@dataclass(frozen=True)
class ChildRows:
    """Lines of each row (sale lines, journal lines) on a second sheet.

    Each line is one row of the sheet `sheet`, led by `parent_columns` (taken from the parent row: its
    number, date...) so the sheet stands on its own for a pivot table; the lines come from the
    prefetched relation `related` (its prefetch queryset orders them and joins what they show).
    """

    sheet: str
    related: str
    columns: Sequence[Column]
    parent_columns: Sequence[Column] = field(default_factory=tuple)


@dataclass(frozen=True)
class ExportSpec:
    """What an admin exports: the main sheet's columns and optionally the lines of each row."""

    sheet: str
    columns: Sequence[Column]
    children: ChildRows | None = None


# --- rebuilding the changelist on the worker --------------------------------------------------------


def changelist_request(*, model_admin: Any, user: Any, query: str, path: str | None = None) -> HttpRequest:
    """A GET request for the changelist with `query`, as `user` (no session, no middleware).

    `path`: the changelist's URL path as the launching page knew it; without it, reversed (which
    loads the whole URLconf: every view module, ReportLab with the PDF views, ~8 MB in a worker).
    """
    request = HttpRequest()
    request.method = "GET"
    opts = model_admin.model._meta
    if path is None:
        path = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    request.path = request.path_info = path
    params = QueryDict(query, mutable=True)
    for key in NOT_FILTERS:
        params.pop(key, None)
    params._mutable = False
    request.GET = params
    request.META = {"SERVER_NAME": "worker", "SERVER_PORT": "80", "QUERY_STRING": params.urlencode()}
    request.user = user
    return request


def _model_admin(label: str) -> Any:
    from django.apps import apps
    from django.contrib import admin
    from django.utils.module_loading import module_has_submodule

    # Celery processes install the admin without autodiscovery (settings.CELERY_PROCESS): the export
    # loads the admin module of the model's own app (where its ModelAdmin is registered), not every
    # app's (each brings what its pages need: ~4 MB in a pool process); only when the model is not
    # registered there does it autodiscover them all. Later calls find them imported (a no-op).
    try:
        app = apps.get_model(label)._meta.app_config
    except (LookupError, ValueError):
        app = None
    if app is not None and module_has_submodule(app.module, "admin"):
        import_module(f"{app.name}.admin")
    if not _registered(admin.site, label):
        admin.autodiscover()
    model_admin = _registered(admin.site, label)
    if model_admin is None or not hasattr(model_admin, "get_excel_export"):
        raise JobFailed(f"There is no Excel export for {label!r} any more.")
    return model_admin


def _registered(site: Any, label: str) -> Any:
    return next((ma for model, ma in site._registry.items() if model._meta.label_lower == label), None)


def user_may_export(user: Any, model_admin: Any, request: HttpRequest) -> bool:
    return bool(user.is_active and user.is_staff and model_admin.has_view_permission(request))


def describe_filters(changelist: Any, request: HttpRequest) -> list[tuple[str, str]]:
    """The filters, search, date drill-down and ordering of a changelist, in words, for the Filters sheet."""
    used = {key for key in request.GET if key not in ("q", "o")}
    rows: list[tuple[str, str]] = []
    described: set[str] = set()
    for spec in changelist.filter_specs:
        expected = set(spec.expected_parameters() or ())
        if not expected & used:
            continue
        described |= expected
        chosen = ""
        try:
            for choice in spec.choices(changelist):
                if choice.get("selected") and "display" in choice and choice.get("query_string") is not None:
                    chosen = str(choice["display"])
                    break
        except Exception:
            chosen = ""
        if not chosen:
            # Unfold's dropdowns render a form instead of links: look the value up in their choices.
            values = {value for key in expected & used for value in request.GET.getlist(key)}
            labels = [
                str(choice[1])
                for choice in getattr(spec, "lookup_choices", None) or ()
                if isinstance(choice, (list, tuple)) and len(choice) == 2 and str(choice[0]) in values
            ]
            chosen = ", ".join(labels)
        raw = ", ".join(f"{key} = {request.GET.get(key)}" for key in sorted(expected & used))
        rows.append((f"Filter: {spec.title}", chosen or raw))
    for key in sorted(used - described):
        rows.append((f"Filter: {key}", ", ".join(request.GET.getlist(key))))
    rows.append(("Search", changelist.query or "(none)"))
    rows.append(("Ordering", describe_ordering(changelist)))
    return rows


def describe_ordering(changelist: Any) -> str:
    default = changelist.model_admin.ordering or changelist.model._meta.ordering or ["pk"]
    default_text = "the list's default: " + ", ".join(str(part) for part in default)
    columns = changelist.get_ordering_field_columns()
    if not columns or "o" not in changelist.params:
        return default_text
    words = []
    for index, direction in columns.items():
        if not 0 <= index < len(changelist.list_display):
            continue  # "o=99" by hand: the list ignores a column it does not have, and so does this
        name = changelist.list_display[index]
        try:
            label = str(label_for_field(name, changelist.model, changelist.model_admin))
        except AttributeError:
            label = str(name)
        label = label[:1].upper() + label[1:]
        words.append(f"{label} ({'ascending' if direction == 'asc' else 'descending'})")
    return ", ".join(words) or default_text


def business_scope(user: Any) -> str:
    if sees_all_businesses(user):
        return "All businesses"
    return ", ".join(visible_businesses(user).order_by("name").values_list("name", flat=True)) or "(none)"


# --- fetching: plain values when the columns allow it, model instances otherwise -------------------


@dataclass
class _Plan:
    """How to read a sheet's columns from one values_list() row: the field paths to select and, per
    column, a function of the row tuple."""

    model: type[Model]
    paths: list[str]
    getters: list[Callable[[tuple[Any, ...]], Any]]

    def index(self, path: str) -> int:
        if path not in self.paths:
            self.paths.append(path)
        return self.paths.index(path)


def _concrete_field(model: type[Model], name: str) -> Any:
    """The concrete field `name` ("pk" too) of `model`, or None."""
    from django.core.exceptions import FieldDoesNotExist

    if name == "pk":
        return model._meta.pk
    try:
        found = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    return found if getattr(found, "concrete", False) else None


def _display_field(model: type[Model], name: str) -> Any:
    """The field with choices that `name` ("get_status_display") displays, or None."""
    if not (name.startswith("get_") and name.endswith("_display")):
        return None
    field = _concrete_field(model, name.removeprefix("get_").removesuffix("_display"))
    return field if field is not None and not field.is_relation and field.choices else None


def _value_getter(plan: _Plan, column: Column) -> Callable[[tuple[Any, ...]], Any] | None:
    """A getter over the values row that gives what `column.getter()` gives on the instance, or None
    when the column needs the instance (a callable or property without `reads`, a relation object...)."""
    from django.utils.encoding import force_str
    from django.utils.hashable import make_hashable

    if callable(column.value) or (
        "__" not in column.value
        and _concrete_field(plan.model, column.value) is None
        and _display_field(plan.model, column.value) is None
    ):
        # Code of the admin or the model: run on a stand-in holding the fields it declares it reads.
        if not column.reads or any(_concrete_field(plan.model, name) is None for name in column.reads):
            return None
        function: Callable[[Any], Any]
        if callable(column.value):
            function = column.value
        else:
            attr = getattr(plan.model, column.value, None)
            if isinstance(attr, property) and attr.fget is not None:
                function = attr.fget
            elif callable(attr) and not isinstance(attr, type):
                function = attr
            else:
                return None
        stand_in = namedtuple("Row", column.reads)  # type: ignore[misc]
        where = [plan.index(name) for name in column.reads]

        def computed(row: tuple[Any, ...]) -> Any:
            return function(stand_in._make([row[i] for i in where]))

        return computed

    parts = column.value.split("__")
    model: Any = plan.model
    for part in parts[:-1]:
        relation = _concrete_field(model, part)
        if relation is None or not (relation.many_to_one or relation.one_to_one):
            return None
        model = relation.related_model
    last = parts[-1]
    prefix = "__".join(parts[:-1])
    field = _concrete_field(model, last)
    if field is not None and not field.is_relation:
        return operator.itemgetter(plan.index(column.value))
    if field is None:
        field = _display_field(model, last)
        if field is None:
            return None
        index = plan.index(f"{prefix}__{field.name}" if prefix else field.name)
        labels = {key: force_str(label, strings_only=True) for key, label in make_hashable(field.flatchoices)}

        def display(row: tuple[Any, ...]) -> Any:  # as Model._get_FIELD_display
            value = make_hashable(row[index])
            return labels[value] if value in labels else force_str(value, strings_only=True)

        return display
    return None


def _plan(model: type[Model], columns: Sequence[Column]) -> _Plan | None:
    plan = _Plan(model=model, paths=["pk"], getters=[])
    for column in columns:
        getter = _value_getter(plan, column)
        if getter is None:
            return None
        plan.getters.append(getter)
    return plan


def _lines_queryset(queryset: QuerySet[Model], related: str) -> QuerySet[Model] | None:
    """The queryset prefetch_related would use for `related` (its Prefetch's own, or the related
    manager's), or None when the lookups are not one plain level."""
    from django.db.models import Prefetch

    relation = queryset.model._meta.get_field(related)
    if not (relation.one_to_many and relation.auto_created):
        return None
    lines: QuerySet[Model] | None = None
    for lookup in queryset._prefetch_related_lookups:  # type: ignore[attr-defined]
        if isinstance(lookup, Prefetch):
            if lookup.prefetch_to != related or lookup.to_attr:
                return None
            lines = lookup.queryset
        elif lookup != related:
            return None
    child: Any = relation.related_model
    return lines if lines is not None else child._default_manager.all()


def _value_rows(queryset: QuerySet[Model], spec: ExportSpec) -> Iterator[tuple[list[Any], list[list[Any]]]] | None:
    """(row values, lines' values) of each row of `queryset` from values_list queries, in the
    queryset's order: one query for the rows (streamed) and one for the lines of each chunk of rows
    (grouped by parent in the lines' own order, as prefetch_related does). None when a column needs
    the model instance."""
    main = _plan(queryset.model, spec.columns)
    if main is None:
        return None
    lines_plan = None
    lines_qs = None
    parent_getters: list[Callable[[tuple[Any, ...]], Any]] = []
    fk_name = ""
    if spec.children is not None:
        children = spec.children
        lines_qs = _lines_queryset(queryset, children.related)
        if lines_qs is None:
            return None
        relation: Any = queryset.model._meta.get_field(children.related)
        fk_name = relation.field.name
        lines_plan = _plan(lines_qs.model, children.columns)
        parent_plan = _Plan(model=main.model, paths=main.paths, getters=[])
        for column in children.parent_columns:
            getter = _value_getter(parent_plan, column)
            if getter is None:
                return None
            parent_getters.append(getter)
        if lines_plan is None:
            return None
        fk_index = lines_plan.index(relation.field.attname)
    rows = queryset.prefetch_related(None).values_list(*main.paths).iterator(chunk_size=CHUNK_SIZE)

    def generate() -> Iterator[tuple[list[Any], list[list[Any]]]]:
        while True:
            chunk = list(itertools.islice(rows, CHUNK_SIZE))
            if not chunk:
                return
            by_parent: dict[Any, list[list[Any]]] = {}
            if lines_plan is not None and lines_qs is not None:
                getters = lines_plan.getters
                found = lines_qs.filter(**{f"{fk_name}__in": [row[0] for row in chunk]}).values_list(*lines_plan.paths)
                for line in found:
                    by_parent.setdefault(line[fk_index], []).append([get(line) for get in getters])
            for row in chunk:
                values = [get(row) for get in main.getters]
                if lines_plan is None:
                    yield values, []
                    continue
                lead = [get(row) for get in parent_getters]
                yield values, [[*lead, *line] for line in by_parent.get(row[0], ())]

    return generate()


def _object_rows(rows: Iterable[Any], spec: ExportSpec) -> Iterator[tuple[list[Any], list[list[Any]]]]:
    """(row values, lines' values) read from model instances (the prefetched lines' instances)."""
    getters = [c.getter() for c in spec.columns]
    children = spec.children
    parent_getters = [c.getter() for c in children.parent_columns] if children else []
    line_getters = [c.getter() for c in children.columns] if children else []
    for obj in rows:
        values = [get(obj) for get in getters]
        if children is None:
            yield values, []
            continue
        lead = [get(obj) for get in parent_getters]
        yield values, [[*lead, *(get(line) for get in line_getters)] for line in getattr(obj, children.related).all()]


# --- writing --------------------------------------------------------------------------------------


def _cell_value(column_type: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if column_type == "text":
        return str(value)
    if column_type == "bool":
        return "yes" if value else "no"
    if column_type == "datetime":
        if isinstance(value, dt.datetime):
            if timezone.is_aware(value):
                value = timezone.localtime(value)
            return value.replace(tzinfo=None)
        return value
    if column_type == "date":
        if isinstance(value, dt.datetime):
            return timezone.localtime(value).date() if timezone.is_aware(value) else value.date()
        return value
    if column_type == "int":
        return int(value)
    # money and decimal: Decimal as stored (written with all its digits)
    return value if isinstance(value, (Decimal, int, float)) else Decimal(str(value))


def _converter(column_type: str) -> Callable[[Any], Any] | None:
    """What turns a raw value into the cell's value; None when the writer takes it as it is (the
    common cases: text, dates, Decimals)."""
    if column_type == "text":
        return None  # the writer str()s it; "" is an empty cell
    if column_type == "date":
        return lambda value: value if type(value) is dt.date or value is None else _cell_value("date", value)
    if column_type in ("money", "decimal"):
        return lambda value: value if type(value) is Decimal or value is None else _cell_value(column_type, value)
    return lambda value: _cell_value(column_type, value)


# Column type -> the writer's cell kind (bool columns are written "yes"/"no").
_SHEET_KINDS = {
    "text": "text",
    "bool": "text",
    "date": "date",
    "datetime": "datetime",
    "money": "number",
    "int": "number",
    "decimal": "number",
}


class SheetWriter:
    """One sheet of the export: bold frozen header with an autofilter, typed rows, a bold totals row."""

    def __init__(self, book: XlsxWriter, title: str, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.converters = [_converter(c.type) for c in self.columns]
        self.plain = all(c is None for c in self.converters)
        self.totals: list[Decimal | None] = [Decimal(0) if c.total else None for c in self.columns]
        self.summed = [index for index, c in enumerate(self.columns) if c.total]
        self.rows = 0
        sheet_columns = [
            XlsxColumn(
                kind=_SHEET_KINDS[c.type],
                number_format=NUMBER_FORMATS.get(c.type),
                width=c.width or DEFAULT_WIDTHS[c.type],
            )
            for c in self.columns
        ]
        self.sheet = book.sheet(title, sheet_columns, header=[c.header for c in self.columns])

    def write(self, values: list[Any]) -> None:
        """Append one row from its raw values (as the columns' getters return them)."""
        if not self.plain:
            values = [v if convert is None else convert(v) for convert, v in zip(self.converters, values, strict=True)]
        totals = self.totals
        for index in self.summed:
            value = values[index]
            if value is not None:
                totals[index] += value if type(value) is Decimal else Decimal(value)  # type: ignore[operator]
        self.sheet.row(values)
        self.rows += 1

    def finish(self) -> None:
        if self.summed:
            self.sheet.bold_row(
                ["Total" if index == 0 and total is None else total for index, total in enumerate(self.totals)]
            )
        self.sheet.close()


def write_workbook(
    *,
    path: Path,
    spec: ExportSpec,
    rows: Iterable[tuple[list[Any], list[list[Any]]]],
    filters: list[tuple[str, str]],
    report: Callable[[int], None],
) -> int:
    """Write the export to `path` from (row values, lines' values) pairs; `report(done)` is called
    after every chunk of rows. Returns the row count. A failed or cancelled export leaves no file."""
    with XlsxWriter(path) as book:
        main = SheetWriter(book, spec.sheet, spec.columns)
        lines = None
        if spec.children is not None:
            lines = SheetWriter(book, spec.children.sheet, [*spec.children.parent_columns, *spec.children.columns])
        done = 0
        for values, children in rows:
            main.write(values)
            if lines is not None:
                for line in children:
                    lines.write(line)
            done += 1
            if done % CHUNK_SIZE == 0:
                report(done)
        main.finish()
        if lines is not None:
            lines.finish()
        sheet = book.sheet("Filters", [XlsxColumn("text", width=28), XlsxColumn("auto", width=70)])
        sheet.bold_row(["What this export shows"])
        for name, value in filters:
            sheet.row([name, value])
        sheet.row(["Rows", done])
    return done


def export_permission(job: Job) -> str | None:
    """Reading an export needs the exported model's view right (what opening its list needs)."""
    from django.apps import apps
    from django.contrib.auth import get_permission_codename

    try:
        opts = apps.get_model(str(job.params.get("model", "")))._meta
    except (LookupError, ValueError):
        return "jobs.change_job"  # a label no model has: the owner's (or an admin's) only
    return f"{opts.app_label}.{get_permission_codename('view', opts)}"


@job_kind(CHANGELIST_XLSX, label="Excel: export of a list", permission=export_permission)
def export_changelist(ctx: JobContext) -> None:
    """Export the rows a changelist showed its user (params: model, query, options) to .xlsx."""
    params = ctx.params
    model_admin = _model_admin(params["model"])
    user = ctx.launcher()
    if user is None:
        raise JobFailed("The person who asked for this export no longer exists.")
    request = changelist_request(
        model_admin=model_admin, user=user, query=params.get("query", ""), path=params.get("path") or None
    )
    if not user_may_export(user, model_admin, request):
        raise JobFailed(
            f"{user.get_username()} may no longer view {model_admin.model._meta.verbose_name_plural}: nothing exported."
        )
    try:
        changelist = model_admin.get_changelist_instance(request)
    except IncorrectLookupParameters as exc:
        raise JobFailed("The list's filters are not valid any more; export again from the list.") from exc
    options = model_admin.excel_export_options(params.get("options") or {})
    queryset: QuerySet[Model] = model_admin.excel_export_queryset(request, changelist.queryset, options)
    spec: ExportSpec = model_admin.get_excel_export(request, options)
    total = queryset.count()
    ctx.rows(0, total)

    filters = describe_filters(changelist, request)
    filters += model_admin.excel_export_describe_options(options)
    filters += [
        ("Businesses", business_scope(user)),
        ("Exported by", user.get_full_name() or user.get_username()),
        ("Exported at", timezone.localtime().strftime("%d %b %Y %H:%M") + f" ({timezone.get_current_timezone_name()})"),
    ]
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    name = f"{model_admin.model._meta.model_name}-{stamp}.xlsx"
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        path = Path(tmp) / name
        rows = None if model_admin.excel_export_needs_objects() else _value_rows(queryset, spec)
        if rows is None:
            objects = model_admin.excel_export_rows(request, queryset.iterator(chunk_size=CHUNK_SIZE), options)
            rows = _object_rows(objects, spec)
        done = write_workbook(
            path=path, spec=spec, rows=rows, filters=filters, report=lambda done: ctx.rows(done, total)
        )
        ctx.rows(done, total, f"{done:,} rows exported")
        ctx.save_result_path(name, path)
