"""Excel exports of what a changelist shows: one generic job kind for every admin that declares columns.

The job's params hold the model label, the changelist's query string (filters, search, ordering,
date drill-down) and the export's options (e.g. an "as of" date). On the worker the handler rebuilds a
GET request for the changelist as the user who launched the job, re-checks that he is still active
staff with the model's view permission, and takes the queryset the changelist itself builds: the
admin's get_queryset (with its business scoping), filters, search and ordering all come from there,
so a forged query string can never reach rows the user cannot see on the page.

The workbook is written in openpyxl's write-only mode from `queryset.iterator(chunk_size=...)` into a
temporary file that is kept with `save_result_path`: memory stays flat whatever the row count.
Totals are computed in Python from the Decimal values written (not Excel formulas): the figure in the
file is the one the database holds, also in viewers that do not compute formulas.

Columns are declared on the admin (jobs.admin_exports.ExcelExportMixin): this module knows no model.
"""

from __future__ import annotations

import datetime as dt
import operator
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import label_for_field
from django.contrib.auth import get_user_model
from django.db.models import Model, QuerySet
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils import timezone

from jobs.registry import JobContext, JobFailed, job_kind
from tenancy.scoping import sees_all_businesses, visible_businesses

if TYPE_CHECKING:
    from openpyxl.workbook.workbook import Workbook
    from openpyxl.worksheet._write_only import WriteOnlyWorksheet

CHANGELIST_XLSX = "jobs.changelist_xlsx"
CHUNK_SIZE = 2000

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
    """

    header: str
    value: str | Callable[[Any], Any]
    type: str = "text"
    width: float | None = None
    total: bool = False

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


def changelist_request(*, model_admin: Any, user: Any, query: str) -> HttpRequest:
    """A GET request for the changelist with `query`, as `user` (no session, no middleware)."""
    request = HttpRequest()
    request.method = "GET"
    opts = model_admin.model._meta
    request.path = request.path_info = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    params = QueryDict(query, mutable=True)
    for key in NOT_FILTERS:
        params.pop(key, None)
    params._mutable = False
    request.GET = params
    request.META = {"SERVER_NAME": "worker", "SERVER_PORT": "80", "QUERY_STRING": params.urlencode()}
    request.user = user
    return request


def _model_admin(label: str) -> Any:
    from django.contrib import admin

    for model, model_admin in admin.site._registry.items():
        if model._meta.label_lower == label:
            if not hasattr(model_admin, "get_excel_export"):
                break
            return model_admin
    raise JobFailed(f"There is no Excel export for {label!r} any more.")


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
    columns = changelist.get_ordering_field_columns()
    if not columns or "o" not in changelist.params:
        default = changelist.model_admin.ordering or changelist.model._meta.ordering or ["pk"]
        return "the list's default: " + ", ".join(str(part) for part in default)
    words = []
    for index, direction in columns.items():
        name = changelist.list_display[index]
        try:
            label = str(label_for_field(name, changelist.model, changelist.model_admin))
        except AttributeError:
            label = str(name)
        label = label[:1].upper() + label[1:]
        words.append(f"{label} ({'ascending' if direction == 'asc' else 'descending'})")
    return ", ".join(words)


def business_scope(user: Any) -> str:
    if sees_all_businesses(user):
        return "All businesses"
    return ", ".join(visible_businesses(user).order_by("name").values_list("name", flat=True)) or "(none)"


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
    # money and decimal: Decimal as stored (openpyxl writes its exact digits)
    return value if isinstance(value, (Decimal, int, float)) else Decimal(str(value))


class SheetWriter:
    """One write-only sheet: header (frozen, bold, autofilter), typed rows, a bold totals row."""

    def __init__(self, workbook: Workbook, title: str, columns: Sequence[Column]) -> None:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font
        from openpyxl.utils import get_column_letter

        self.columns = list(columns)
        self.sheet: WriteOnlyWorksheet = workbook.create_sheet(title[:31])
        self.getters = [c.getter() for c in self.columns]
        self.types = [c.type for c in self.columns]
        self.totals: list[Decimal | None] = [Decimal(0) if c.total else None for c in self.columns]
        self.rows = 0
        self.bold = Font(bold=True)
        self.letters = [get_column_letter(i) for i in range(1, len(self.columns) + 1)]
        # Widths and the frozen header go before the first row in a streamed sheet.
        for letter, column in zip(self.letters, self.columns, strict=True):
            self.sheet.column_dimensions[letter].width = column.width or DEFAULT_WIDTHS[column.type]
        self.sheet.freeze_panes = "A2"
        # One styled cell per formatted column, reused for every row: the row is written out as it
        # is appended, so the cell only carries its value to the file.
        self.templates: list[Any] = []
        for column in self.columns:
            if column.type in NUMBER_FORMATS:
                cell = WriteOnlyCell(self.sheet)
                cell.number_format = NUMBER_FORMATS[column.type]
                self.templates.append(cell)
            else:
                self.templates.append(None)
        header = []
        for column in self.columns:
            cell = WriteOnlyCell(self.sheet, value=column.header)
            cell.font = self.bold
            header.append(cell)
        self.sheet.append(header)

    def write(self, values: Iterable[Any]) -> None:
        """Append one row from its raw values (as the getters return them)."""
        row: list[Any] = []
        for index, raw in enumerate(values):
            value = _cell_value(self.types[index], raw)
            total = self.totals[index]
            if total is not None and value is not None:
                self.totals[index] = total + Decimal(value)
            template = self.templates[index]
            if template is None or value is None:
                row.append(value)
            else:
                template.value = value
                row.append(template)
        self.sheet.append(row)
        self.rows += 1

    def write_obj(self, obj: Any, extra: Sequence[Any] = ()) -> None:
        self.write([*extra, *(get(obj) for get in self.getters[len(extra) :])])

    def finish(self) -> None:
        from openpyxl.cell import WriteOnlyCell

        last = self.letters[-1]
        self.sheet.auto_filter.ref = f"A1:{last}{self.rows + 1}"
        if any(total is not None for total in self.totals):
            row = []
            for index, total in enumerate(self.totals):
                cell = WriteOnlyCell(self.sheet, value="Total" if index == 0 and total is None else total)
                cell.font = self.bold
                if total is not None:
                    cell.number_format = NUMBER_FORMATS[self.types[index]]
                row.append(cell)
            self.sheet.append(row)


def write_workbook(
    *,
    path: Path,
    spec: ExportSpec,
    rows: Iterable[Any],
    filters: list[tuple[str, str]],
    report: Callable[[int], None],
) -> int:
    """Write the export to `path`; `report(done)` is called after every chunk. Returns the row count."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    try:
        return _write_sheets(workbook, path=path, spec=spec, rows=rows, filters=filters, report=report)
    except BaseException:
        _discard(workbook)
        raise


def _discard(workbook: Workbook) -> None:
    """Close the streamed sheets of an export that stopped (cancelled, failed) and delete their
    temporary files: openpyxl would only delete them when the worker process exits."""
    for sheet in workbook.worksheets:
        writer = getattr(sheet, "_writer", None)
        if writer is None:
            continue
        try:
            if not sheet.closed:  # type: ignore[union-attr]
                sheet.close()  # type: ignore[union-attr]
            writer.cleanup()
        except (OSError, ValueError):
            pass


def _write_sheets(
    workbook: Workbook,
    *,
    path: Path,
    spec: ExportSpec,
    rows: Iterable[Any],
    filters: list[tuple[str, str]],
    report: Callable[[int], None],
) -> int:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    main = SheetWriter(workbook, spec.sheet, spec.columns)
    lines = None
    parent_getters: list[Callable[[Any], Any]] = []
    related_getter: Callable[[Any], Any] | None = None
    if spec.children is not None:
        children = spec.children
        lines = SheetWriter(workbook, children.sheet, [*children.parent_columns, *children.columns])
        parent_getters = [c.getter() for c in children.parent_columns]
        related_name = children.related

        def related_getter(obj: Any) -> Any:
            return getattr(obj, related_name).all()

    done = 0
    for obj in rows:
        main.write_obj(obj)
        if lines is not None and related_getter is not None:
            parent_values = [get(obj) for get in parent_getters]
            for line in related_getter(obj):
                lines.write_obj(line, parent_values)
        done += 1
        if done % CHUNK_SIZE == 0:
            report(done)
    main.finish()
    if lines is not None:
        lines.finish()

    sheet = workbook.create_sheet("Filters")
    sheet.column_dimensions["A"].width = 28
    sheet.column_dimensions["B"].width = 70
    title = WriteOnlyCell(sheet, value="What this export shows")
    title.font = Font(bold=True)
    sheet.append([title])
    for name, value in filters:
        sheet.append([name, value])
    sheet.append(["Rows", done])
    workbook.save(path)
    return done


@job_kind(CHANGELIST_XLSX, label="Excel: export of a list")
def export_changelist(ctx: JobContext) -> None:
    """Export the rows a changelist showed its user (params: model, query, options) to .xlsx."""
    params = ctx.params
    model_admin = _model_admin(params["model"])
    user = get_user_model().objects.filter(pk=ctx.job.requested_by_id).first() if ctx.job.requested_by_id else None
    if user is None:
        raise JobFailed("The person who asked for this export no longer exists.")
    request = changelist_request(model_admin=model_admin, user=user, query=params.get("query", ""))
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
        rows = model_admin.excel_export_rows(request, queryset.iterator(chunk_size=CHUNK_SIZE), options)
        done = write_workbook(
            path=path, spec=spec, rows=rows, filters=filters, report=lambda done: ctx.rows(done, total)
        )
        ctx.rows(done, total, f"{done:,} rows exported")
        ctx.save_result_path(name, path)
