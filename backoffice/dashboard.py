"""The admin landing page, the owner's morning page: per business, today's and this week's figures,
what waits for a person (each linked to the page where it is handled), the last backup, and charts
of the last 30 days.

Every figure comes from a handful of aggregate queries whatever the number of days or businesses
(docs/dashboard.md lists them): takings from the journal lines (`accounts.selectors.takings_by_day`),
income, cost of sales and expenses from the ledger's daily totals (`trading_by_day`), top items from
the sale and laundry lines (`operations.selectors.top_items`). A person sees only the businesses he
may see (tenancy/scoping.py), profit and expenses only with `accounts.view_reports` (the right of the
P&L), top items only with `operations.view_sale`, and a link only to a page he may open.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, Q, Sum
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from accounts.fields import ZERO
from accounts.selectors import Takings, Trading, takings_by_day, trading_by_day
from backoffice import dashboard_charts as charts
from backoffice.alerts import open_alerts
from backoffice.backups import backup_status
from backoffice.models import Alert, Backup, BackupState, VerifyState
from integrations.mpesa.models import InboxMessage, StatusQuery, UnallocatedPayment
from integrations.mpesa.selectors import (
    inbox_waiting_for_person,
    status_queries_waiting_for_person,
    unallocated_payments,
)
from jobs.models import ACTIVE_STATES, Job, JobState
from operations.models import DayClosing
from operations.selectors import ItemSales, UnclosedDays, top_items, unclosed_days
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_businesses

CHART_DAYS = 30
TOP_ITEMS = 10
# The GET parameter of the business selector: a business id, or ALL (the default).
BUSINESS_PARAM = "business"
ALL = "all"
# A backup older than this is stale (the alert rule's default threshold, issue 13).
VIEW_REPORTS = "accounts.view_reports"
VIEW_SALES = "operations.view_sale"


def environment_callback(request: HttpRequest) -> list[str]:
    return ["Development", "warning"] if settings.DEBUG else ["Production", "success"]


@dataclass(frozen=True)
class Window:
    """The days the page covers: today, the week so far (from Monday) and the charts' 30 days."""

    today: dt.date
    week_start: dt.date
    chart_from: dt.date

    @classmethod
    def ending(cls, today: dt.date) -> Window:
        return cls(
            today=today,
            week_start=today - dt.timedelta(days=today.weekday()),
            chart_from=today - dt.timedelta(days=CHART_DAYS - 1),
        )

    @property
    def days(self) -> list[dt.date]:
        return [self.chart_from + dt.timedelta(days=n) for n in range(CHART_DAYS)]


@dataclass
class Figures:
    """Today's and this week's money of one business (or a total of several)."""

    takings_today: Takings = field(default_factory=Takings)
    takings_week: Takings = field(default_factory=Takings)
    # None when the person may not read the P&L (accounts.view_reports).
    trading_today: Trading | None = None
    trading_week: Trading | None = None


def admin_link(request: HttpRequest, model: type[models.Model], **query: Any) -> str:
    """The changelist of `model` (filtered by `query`) if it is in the admin and the person may open
    it; "" otherwise, so a page he could not open is never offered."""
    try:
        model_admin = admin.site.get_model_admin(model)
    except NotRegistered:
        return ""
    if not model_admin.has_view_permission(request):
        return ""
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def selected_business(request: HttpRequest, businesses: Sequence[Business]) -> Business | None:
    """The business the charts are drawn for (None: all the person sees), from ?business=.

    Anything but "all" or the id of a business he sees is refused (403): figures of another scope
    than the one asked for would be read as the asked one's. The same answer for a business that
    does not exist and for one he may not see, so the page tells nothing about other businesses.
    """
    value = request.GET.get(BUSINESS_PARAM, ALL).strip()
    if value in ("", ALL):
        return None
    for business in businesses:
        if str(business.pk) == value:
            return business
    raise PermissionDenied("You may not see that business.")


def _businesses_with_jobs(user: Any) -> list[Business]:
    """The user's businesses by name, with their pending and failed jobs counted (one query)."""
    return list(
        visible_businesses(user)
        .order_by("name")
        .annotate(
            pending_jobs=Count("jobs", filter=Q(jobs__state__in=ACTIVE_STATES)),
            failed_jobs=Count("jobs", filter=Q(jobs__state=JobState.FAILED)),
        )
    )


def _waiting_counts(business_ids: list[int]) -> dict[str, dict[int, int]]:
    """Per business: callbacks and lost confirmations waiting for a person (two grouped queries;
    a Count through tills -> inbox in the businesses' query would multiply the jobs' join)."""
    inbox = (
        inbox_waiting_for_person()
        .filter(till__business__in=business_ids)
        .values("till__business")
        .annotate(n=Count("id"))
        .values_list("till__business", "n")
    )
    queries = (
        status_queries_waiting_for_person()
        .filter(business__in=business_ids)
        .values("business")
        .annotate(n=Count("id"))
        .values_list("business", "n")
    )
    return {"payments_waiting": dict(inbox), "status_queries_waiting": dict(queries)}


def _suspense(business_ids: list[int]) -> dict[int, tuple[int, Decimal]]:
    """Per business: M-Pesa payments (partly) in suspense, to allocate, and the amount waiting."""
    rows = (
        unallocated_payments()
        .filter(business__in=business_ids)
        .values("business")
        .annotate(n=Count("id"), amount=Sum("unallocated_amount"))
        .values_list("business", "n", "amount")
    )
    return {business_id: (n, amount or ZERO) for business_id, n, amount in rows}


# --- the site's own state: the last backup in the dashboard's words -------------------------------


@dataclass(frozen=True)
class BackupStatus:
    backup: Backup | None
    age_hours: float | None  # since it finished (or started, when it has not)
    ok: bool  # succeeded, verified by a restore and younger than settings.BACKUP_STALE_HOURS
    problem: str  # why not ok, in words


def dashboard_backup_status(*, now: dt.datetime) -> BackupStatus:
    """The last backup started (backoffice.backups.backup_status), and whether it is one to rely on."""
    backup = backup_status(now=now).last
    if backup is None:
        return BackupStatus(None, None, False, "none made yet")
    when = backup.finished_at or backup.started_at
    age = (now - when).total_seconds() / 3600
    if backup.state == BackupState.FAILED:
        problem = "the last backup failed"
    elif backup.state == BackupState.RUNNING:
        problem = "" if age < 1 else "the last backup has been running for over an hour"
    elif backup.verify_state == VerifyState.FAILED:
        problem = "the restore check failed"
    elif backup.verify_state == VerifyState.PENDING:
        problem = "not verified by a restore yet"
    else:
        problem = ""
    if not problem and age > settings.BACKUP_STALE_HOURS:
        problem = f"older than {settings.BACKUP_STALE_HOURS} hours"
    return BackupStatus(backup, age, not problem and backup.state == BackupState.SUCCEEDED, problem)


# --- the page ------------------------------------------------------------------------------------


def _figures(
    businesses: Sequence[Business],
    window: Window,
    takings: dict[tuple[int, dt.date], Takings],
    trading: dict[tuple[int, dt.date], Trading] | None,
) -> Figures:
    """Today and the week so far of `businesses` together, from the per-day series (no query)."""
    ids = [b.pk for b in businesses]
    week = [d for d in window.days if d >= window.week_start]
    figures = Figures(
        takings_today=sum((takings.get((b, window.today), Takings()) for b in ids), Takings()),
        takings_week=sum((takings.get((b, d), Takings()) for b in ids for d in week), Takings()),
    )
    if trading is not None:
        figures.trading_today = sum((trading.get((b, window.today), Trading()) for b in ids), Trading())
        figures.trading_week = sum((trading.get((b, d), Trading()) for b in ids for d in week), Trading())
    return figures


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _need(key: str, count: int, text: str, url: str, amount: Decimal | None = None) -> dict[str, Any]:
    return {"key": key, "count": count, "text": text, "url": url, "amount": amount if count else None}


def _needs(
    request: HttpRequest,
    business: Business | None,
    counts: dict[str, Any],
    unclosed: UnclosedDays | None = None,
) -> list[dict[str, Any]]:
    """What waits for a person in one business (None: the totals of every business, for the
    owner), each with the link to where it is handled: the same list for a card and for the total."""
    by_business: dict[str, Any] = {"business__id__exact": business.pk} if business else {}
    inbox_filter: dict[str, Any] = {"till__business__id__exact": business.pk} if business else {}
    suspense, callbacks = counts["suspense_count"], counts["payments_waiting"]
    queries, failed, days = counts["status_queries_waiting"], counts["failed_jobs"], counts["days_not_closed"]
    since = f" (since {unclosed.first_day:%a %-d %b})" if unclosed and unclosed.first_day else ""
    return [
        _need(
            "payments-in-suspense",
            suspense,
            f"M-Pesa {_plural(suspense, 'payment')} in suspense to allocate",
            admin_link(request, UnallocatedPayment, **by_business),
            counts["suspense_amount"],
        ),
        _need(
            "payments-waiting",
            callbacks,
            f"M-Pesa {_plural(callbacks, 'callback')} waiting for a person",
            admin_link(request, InboxMessage, **inbox_filter, state__exact="attention"),
        ),
        _need(
            "status-queries-waiting",
            queries,
            f"lost {_plural(queries, 'confirmation')} waiting for a person",
            admin_link(request, StatusQuery, **by_business, state__exact="attention"),
        ),
        _need(
            "failed-jobs",
            failed,
            _plural(failed, "failed job"),
            admin_link(request, Job, **by_business, state__exact=JobState.FAILED),
        ),
        _need(
            "days-not-closed",
            days,
            f"{_plural(days, 'day')} not closed{since}",
            admin_link(request, DayClosing, **by_business),
        ),
    ]


def business_figures(
    request: HttpRequest,
    *,
    businesses: list[Business],
    window: Window,
    takings: dict[tuple[int, dt.date], Takings],
    trading: dict[tuple[int, dt.date], Trading] | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """One row per business (from `_businesses_with_jobs`): today's takings, pending and failed
    jobs, the work waiting for a person - M-Pesa payments in suspense, callbacks held in the inbox,
    lost confirmations no retry could settle, ended days not closed - each with its link, and the
    figures of today and the week. Four grouped queries, whatever the number of businesses."""
    ids = [b.pk for b in businesses]
    waiting = _waiting_counts(ids)
    suspense = _suspense(ids)
    unclosed = unclosed_days(businesses=businesses, now=now)
    rows = []
    for b in businesses:
        row: dict[str, Any] = {
            "business": b,
            "takings": takings.get((b.pk, window.today), Takings()),
            "pending_jobs": b.pending_jobs,  # type: ignore[attr-defined]
            "failed_jobs": b.failed_jobs,  # type: ignore[attr-defined]
            **{name: counts.get(b.pk, 0) for name, counts in waiting.items()},
        }
        count, amount = suspense.get(b.pk, (0, ZERO))
        row |= {
            "suspense_count": count,
            "suspense_amount": amount,
            "days_not_closed": unclosed[b.pk].count if b.pk in unclosed else 0,
            "figures": _figures([b], window, takings, trading),
            "jobs_url": admin_link(request, Job, business__id__exact=b.pk),
        }
        row["needs"] = _needs(request, b, row, unclosed.get(b.pk))
        row["needs_count"] = sum(n["count"] for n in row["needs"])
        rows.append(row)
    return rows


def _owner_panel(request: HttpRequest, rows: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """What only the owner sees: the totals of every business with the jobs of none, open alerts,
    the last backup and the callback spool (one spool and one database for all)."""
    global_jobs = Job.objects.filter(business__isnull=True).aggregate(
        pending=Count("id", filter=Q(state__in=ACTIVE_STATES)), failed=Count("id", filter=Q(state=JobState.FAILED))
    )
    alerts = list(open_alerts(request.user))
    panel: dict[str, Any] = {
        "takings": sum((r["takings"].total for r in rows), ZERO),
        "pending_jobs": sum(r["pending_jobs"] for r in rows) + global_jobs["pending"],
        "failed_jobs": sum(r["failed_jobs"] for r in rows) + global_jobs["failed"],
        "suspense_amount": sum((r["suspense_amount"] for r in rows), ZERO),
        "alerts": alerts,
        "alerts_url": admin_link(request, Alert, resolved_at__isnull="True"),
        "backup": dashboard_backup_status(now=now),
        "backup_url": admin_link(request, Backup),
        "jobs_url": admin_link(request, Job),
    }
    for name in ("payments_waiting", "status_queries_waiting", "suspense_count", "days_not_closed"):
        panel[name] = sum(r[name] for r in rows)
    panel["needs"] = _needs(request, None, panel)
    panel["needs_count"] = sum(n["count"] for n in panel["needs"])
    # The spool is one directory for every business: the owner's alone.
    from integrations.mpesa.spool import spool_status

    try:
        panel["spool"] = spool_status()
    except OSError:
        panel["spool"] = None
    return panel


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    """Unfold's DASHBOARD_CALLBACK: the figures, the work waiting and the charts (docs/dashboard.md)."""
    user = request.user
    now = timezone.now()
    window = Window.ending(timezone.localdate(now))
    businesses = _businesses_with_jobs(user)
    chosen = selected_business(request, businesses)  # refused before any figure is read
    ids = [b.pk for b in businesses]
    can_report = user.has_perm(VIEW_REPORTS)
    can_see_sales = user.has_perm(VIEW_SALES)

    takings = takings_by_day(business_ids=ids, date_from=window.chart_from, date_to=window.today)
    trading = (
        trading_by_day(business_ids=ids, date_from=window.chart_from, date_to=window.today) if can_report else None
    )
    rows = business_figures(request, businesses=businesses, window=window, takings=takings, trading=trading, now=now)

    scope = [chosen] if chosen else businesses
    scope_ids = [b.pk for b in scope]
    items: list[ItemSales] = (
        top_items(business_ids=scope_ids, date_from=window.chart_from, date_to=window.today, limit=TOP_ITEMS)
        if can_see_sales
        else []
    )
    names = {b.pk: b.name for b in businesses}
    context |= {
        "today": window.today,
        "window": window,
        "business_rows": rows,
        "can_view_reports": can_report,
        "can_view_sales": can_see_sales,
        # The total of what he sees: for the owner always (his card also holds the site's state).
        "total_figures": _figures(businesses, window, takings, trading)
        if len(businesses) > 1 or sees_all_businesses(user)
        else None,
        "selected_business": chosen,
        "scope_label": chosen.name if chosen else ("All businesses" if len(businesses) > 1 else ""),
        "business_tabs": _tabs(businesses, chosen),
        "charts": charts.dashboard_charts(
            days=window.days,
            businesses=scope,
            takings=takings,
            trading=trading,
            items=items,
            business_names=names if len(scope) > 1 else None,
        ),
        "top_items": items,
    }
    if sees_all_businesses(user):
        context["all_businesses"] = _owner_panel(request, rows, now)
    return context


def _tabs(businesses: Sequence[Business], chosen: Business | None) -> list[dict[str, Any]]:
    """The business selector (Unfold's navigation component): every business and "all", when there is a choice."""
    if len(businesses) < 2:
        return []
    base = reverse("admin:index")
    tabs = [{"title": "All businesses", "link": base, "active": chosen is None}]
    tabs += [
        {"title": b.name, "link": f"{base}?{urlencode({BUSINESS_PARAM: b.pk})}", "active": chosen == b}
        for b in businesses
    ]
    return tabs
