"""The admin sidebar, grouped by area. Each link shows only to users allowed to view its page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse, reverse_lazy

from jobs.admin import may_view_task_events
from tenancy.scoping import sees_all_businesses


def _can_view(perm: str) -> Callable[[HttpRequest], bool]:
    return lambda request: bool(request.user.has_perm(perm))


def model_link(title: str, icon: str, model: str) -> dict[str, Any]:
    """A sidebar item for the changelist of `model` ("app_label.model_name")."""
    app_label, model_name = model.split(".")
    return {
        "title": title,
        "icon": icon,
        "link": reverse_lazy(f"admin:{app_label}_{model_name}_changelist"),
        "permission": _can_view(f"{app_label}.view_{model_name}"),
    }


def _sees_backups(request: HttpRequest) -> bool:
    """The Backups page's own rule (backoffice/backups_admin.py): "view backup" and every business."""
    return sees_all_businesses(request.user) and bool(request.user.has_perm("backoffice.view_backup"))


def _is_owner(request: HttpRequest) -> bool:
    return bool(request.user.is_superuser)


def owner_model_link(title: str, icon: str, model: str) -> dict[str, Any]:
    """A sidebar item for a page only the owner (every business) may open, with its view right."""
    link = model_link(title, icon, model)
    can_view = link["permission"]
    link["permission"] = lambda request: sees_all_businesses(request.user) and can_view(request)
    return link


def _sees_all_businesses(request: HttpRequest) -> bool:
    return sees_all_businesses(request.user)


def _local_path(item: dict[str, Any]) -> str:
    """The path of an item's link on this site; "" for a link to another site (Flower)."""
    url = urlsplit(str(item["link"]))
    return "" if url.netloc else url.path


def _mark_active(request: HttpRequest, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highlight one item: the one whose link is the longest start of the page's path (the dashboard
    only on itself). Unfold's own rule highlights every link whose path occurs anywhere in the page's,
    which lit Flower's "/" on every page and "Books and period close" on the statements under it."""
    index = reverse("admin:index")
    paths = [_local_path(item) for group in groups for item in group["items"]]
    matching = [p for p in paths if p and (request.path == p if p == index else request.path.startswith(p))]
    best = max(matching, key=len, default="")
    for group in groups:
        for item in group["items"]:
            item["active"] = bool(best) and _local_path(item) == best
    return groups


def sidebar_navigation(request: HttpRequest) -> list[dict[str, Any]]:
    return _mark_active(request, _groups())


def _groups() -> list[dict[str, Any]]:
    return [
        {
            "title": "Overview",
            "items": [
                {"title": "Dashboard", "icon": "dashboard", "link": reverse_lazy("admin:index")},
                {
                    "title": "Daily summary",
                    "icon": "summarize",
                    "link": reverse_lazy("daily_summary"),
                    "permission": _can_view("accounts.view_reports"),
                },
                model_link("Jobs", "pending_actions", "jobs.job"),
                {
                    "title": "Flower (workers)",
                    "icon": "local_florist",
                    "link": settings.FLOWER_URL,
                    "permission": _is_owner,
                },
                {"title": "Health", "icon": "monitor_heart", "link": reverse_lazy("healthz"), "permission": _is_owner},
                {
                    "title": "System",
                    "icon": "dns",
                    "link": reverse_lazy("system"),
                    "permission": _sees_all_businesses,
                },
                {
                    "title": "Alert rules",
                    "icon": "notifications",
                    "link": reverse_lazy("admin:backoffice_alertrule_changelist"),
                    "permission": lambda request: (
                        _sees_all_businesses(request) and request.user.has_perm("backoffice.view_alertrule")
                    ),
                },
                {
                    "title": "Backups",
                    "icon": "backup",
                    "link": reverse_lazy("admin:backoffice_backup_changelist"),
                    "permission": _sees_backups,
                },
            ],
        },
        {
            "title": "Sales and customers",
            "collapsible": True,
            "items": [
                model_link("Sales", "point_of_sale", "operations.sale"),
                model_link("Customers", "groups", "operations.customer"),
                model_link("Customer ledger", "receipt_long", "operations.customertransaction"),
                model_link("Laundry orders", "local_laundry_service", "operations.laundryorder"),
                model_link("End-of-day closings", "lock_clock", "operations.dayclosing"),
            ],
        },
        {
            "title": "Stock and buying",
            "collapsible": True,
            "items": [
                model_link("Catalogue", "inventory_2", "operations.item"),
                model_link("Stock on hand", "warehouse", "operations.stocklevel"),
                model_link("Stock movements", "swap_vert", "operations.stockmovement"),
                model_link("Stock counts", "fact_check", "operations.stockcount"),
                model_link("Opening stock", "start", "operations.openingstock"),
                model_link("Production batches", "water_drop", "operations.productionbatch"),
                model_link("Purchases", "shopping_cart", "operations.purchase"),
                model_link("Suppliers", "local_shipping", "operations.supplier"),
                model_link("Supplier payments", "outbox", "operations.supplierpayment"),
                model_link("Expenses", "payments", "operations.expense"),
            ],
        },
        {
            "title": "Ledger",
            "collapsible": True,
            "items": [
                model_link("Journal entries", "receipt", "accounts.journalentry"),
                model_link("Journal lines", "format_list_bulleted", "accounts.journalline"),
                model_link("Chart of accounts", "account_tree", "accounts.account"),
                model_link("Books and period close", "lock", "accounts.books"),
                {
                    "title": "Trial balance",
                    "icon": "balance",
                    "link": reverse_lazy("admin:accounts_report_trial_balance"),
                    "permission": _can_view("accounts.view_reports"),
                },
                {
                    "title": "Profit and loss",
                    "icon": "trending_up",
                    "link": reverse_lazy("admin:accounts_report_profit_and_loss"),
                    "permission": _can_view("accounts.view_reports"),
                },
                {
                    "title": "Balance sheet",
                    "icon": "account_balance",
                    "link": reverse_lazy("admin:accounts_report_balance_sheet"),
                    "permission": _can_view("accounts.view_reports"),
                },
                {
                    "title": "Cash flow",
                    "icon": "savings",
                    "link": reverse_lazy("admin:accounts_report_cash_flow"),
                    "permission": _can_view("accounts.view_reports"),
                },
            ],
        },
        {
            "title": "Businesses and people",
            "collapsible": True,
            "items": [
                model_link("Businesses", "storefront", "tenancy.business"),
                model_link("Staff assignments", "badge", "tenancy.membership"),
                model_link("Users", "person", "auth.user"),
                model_link("Groups", "group", "auth.group"),
            ],
        },
        {
            "title": "M-Pesa",
            "collapsible": True,
            "items": [
                model_link("Payments", "payments", "integrations.payment"),
                model_link("Unallocated payments", "pending", "integrations.unallocatedpayment"),
                model_link("Payment requests (STK)", "phone_iphone", "integrations.paymentrequest"),
                model_link("Callback inbox", "inbox", "integrations.inboxmessage"),
                model_link("Reversals", "undo", "integrations.reversal"),
                model_link("Receipt checks (status)", "travel_explore", "integrations.statusquery"),
                model_link("Reconciliation", "fact_check", "integrations.reconciliationrun"),
                model_link("Tills", "point_of_sale", "integrations.till"),
            ],
        },
        {
            "title": "Scheduling",
            "collapsible": True,
            "items": [
                model_link("Periodic tasks", "schedule", "django_celery_beat.periodictask"),
                {
                    # Failed and retried tasks: the page's own rule (every business and the right).
                    "title": "Task failures",
                    "icon": "report",
                    "link": reverse_lazy("admin:jobs_taskevent_changelist"),
                    "permission": lambda request: may_view_task_events(request.user),
                },
                model_link("Intervals", "timer", "django_celery_beat.intervalschedule"),
                model_link("Crontabs", "calendar_month", "django_celery_beat.crontabschedule"),
                model_link("Clocked", "alarm", "django_celery_beat.clockedschedule"),
                model_link("Solar", "wb_sunny", "django_celery_beat.solarschedule"),
            ],
        },
        {
            "title": "Emails",
            "collapsible": True,
            "items": [
                owner_model_link("Owner emails", "mail", "backoffice.owneremail"),
                owner_model_link("Email log", "outgoing_mail", "backoffice.emaillog"),
            ],
        },
        {
            "title": "Security",
            "collapsible": True,
            "items": [
                model_link("Login attempts", "lock", "axes.accessattempt"),
                model_link("Login log", "history", "axes.accesslog"),
                model_link("Failed logins", "gpp_bad", "axes.accessfailurelog"),
            ],
        },
    ]
