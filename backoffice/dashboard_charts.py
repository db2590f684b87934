"""The dashboard's charts as Chart.js data and options (JSON) for Unfold's chart components.

Pure functions of the per-day series the dashboard has already read: no query here. Unfold's
`unfold/components/chart/bar.html` and `line.html` draw a canvas from `data` and `options` with the
Chart.js that Unfold ships (nothing is loaded from the network). Options given to the component
replace Unfold's defaults whole, so they are written out in full here (JSON only: Chart.js callbacks
cannot be passed through the component).

Amounts are written as JSON strings of the exact Decimal ("1234.50"): Chart.js reads numeric
strings on a linear axis, and no money goes through a float on the way.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from accounts.fields import ZERO
from accounts.selectors import Takings, Trading
from operations.selectors import ItemSales
from tenancy.models import Business

# Distinct in light and dark mode; a business keeps its colour on every chart of the page.
BUSINESS_COLOURS = ("#2563eb", "#0d9488", "#d97706", "#7c3aed", "#db2777", "#65a30d")
CASH_COLOUR = "#f59e0b"
MPESA_COLOUR = "#16a34a"  # M-Pesa's own green
SALES_COLOUR = "#2563eb"
GROSS_PROFIT_COLOUR = "#16a34a"
TOP_ITEMS_COLOUR = "#7c3aed"
AXIS_TEXT = "#9ca3af"


def amount(value: Decimal) -> str:
    """A chart value: the exact amount in shillings and cents, as text."""
    return f"{value.quantize(Decimal('0.01')):f}"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _options(*, stacked: bool, horizontal: bool = False, legend: bool = True) -> dict[str, Any]:
    # `grid` must exist on both axes: Unfold's script sets its colour when the theme changes.
    axis = {"grid": {"display": True, "tickWidth": 0}, "border": {"display": False}, "ticks": {"color": AXIS_TEXT}}
    value_axis = {**axis, "beginAtZero": True, "stacked": stacked}
    category_axis = {**axis, "stacked": stacked, "grid": {"display": False, "tickWidth": 0}}
    category_axis["ticks"] = (
        {"color": AXIS_TEXT, "autoSkip": False}
        if horizontal
        else {"color": AXIS_TEXT, "autoSkip": True, "maxTicksLimit": 8, "maxRotation": 0}
    )
    return {
        "animation": False,
        "responsive": True,
        "maintainAspectRatio": False,
        "indexAxis": "y" if horizontal else "x",
        "interaction": {"mode": "index", "intersect": False},
        "plugins": {
            "legend": {
                "display": legend,
                "position": "top",
                "align": "end",
                "labels": {"color": AXIS_TEXT, "usePointStyle": True, "pointStyle": "circle", "boxWidth": 6},
            },
            "tooltip": {"enabled": True},
        },
        "scales": {"x": value_axis, "y": category_axis} if horizontal else {"x": category_axis, "y": value_axis},
    }


def _bar(label: str, values: Sequence[Decimal], colour: str) -> dict[str, Any]:
    return {
        "label": label,
        "data": [amount(v) for v in values],
        "backgroundColor": colour,
        "borderColor": colour,
        "borderRadius": 3,
        "maxBarThickness": 18,
    }


def _line(label: str, values: Sequence[Decimal], colour: str) -> dict[str, Any]:
    return {
        "label": label,
        "data": [amount(v) for v in values],
        "borderColor": colour,
        "backgroundColor": colour,
        "borderWidth": 2,
        "pointRadius": 0,
        "pointHoverRadius": 4,
        "tension": 0.3,
    }


def day_label(day: dt.date) -> str:
    return f"{day.day} {day:%b}"


def dashboard_charts(
    *,
    days: Sequence[dt.date],
    businesses: Sequence[Business],
    takings: dict[tuple[int, dt.date], Takings],
    trading: dict[tuple[int, dt.date], Trading] | None,
    items: Sequence[ItemSales],
    business_names: dict[int, str] | None,
) -> dict[str, dict[str, Any]]:
    """The charts of `businesses` together over `days`: takings per business, M-Pesa against cash,
    sales and gross profit (when `trading` was read: the person may see the P&L) and the top items
    (when `items` were read). Each is {"data": JSON, "options": JSON, ...figures shown beside it}.
    `business_names` (several businesses in scope) puts the business after each item's name."""
    labels = [day_label(d) for d in days]
    nothing = Takings()

    def taken(business_id: int, day: dt.date) -> Takings:
        return takings.get((business_id, day), nothing)

    per_business = [
        _bar(b.name, [taken(b.pk, d).total for d in days], BUSINESS_COLOURS[i % len(BUSINESS_COLOURS)])
        for i, b in enumerate(businesses)
    ]
    cash = [sum((taken(b.pk, d).cash for b in businesses), ZERO) for d in days]
    mpesa = [sum((taken(b.pk, d).mpesa for b in businesses), ZERO) for d in days]
    cash_total, mpesa_total = sum(cash, ZERO), sum(mpesa, ZERO)
    total = cash_total + mpesa_total
    result: dict[str, dict[str, Any]] = {
        "takings": {
            "data": _json({"labels": labels, "datasets": per_business}),
            "options": _json(_options(stacked=True, legend=len(businesses) > 1)),
            "total": total,
        },
        "payment_mix": {
            "data": _json(
                {"labels": labels, "datasets": [_bar("Cash", cash, CASH_COLOUR), _bar("M-Pesa", mpesa, MPESA_COLOUR)]}
            ),
            "options": _json(_options(stacked=True)),
            "cash_total": cash_total,
            "mpesa_total": mpesa_total,
            # M-Pesa's share of the takings, to a tenth of a percent; None when nothing was taken.
            "mpesa_percent": (mpesa_total * 100 / total).quantize(Decimal("0.1")) if total > 0 else None,
        },
    }
    if trading is not None:
        nil = Trading()
        daily = [sum((trading.get((b.pk, d), nil) for b in businesses), Trading()) for d in days]
        result["profit"] = {
            "data": _json(
                {
                    "labels": labels,
                    "datasets": [
                        _line("Sales (net of VAT)", [t.income for t in daily], SALES_COLOUR),
                        _line("Gross profit", [t.gross_profit for t in daily], GROSS_PROFIT_COLOUR),
                    ],
                }
            ),
            "options": _json(_options(stacked=False)),
            "income": sum((t.income for t in daily), ZERO),
            "gross_profit": sum((t.gross_profit for t in daily), ZERO),
        }
    if items:

        def name(item: ItemSales) -> str | list[str]:
            # Two lines (Chart.js draws a list as lines): a long name beside its business would be cut.
            return [item.name, business_names[item.business_id]] if business_names else item.name

        result["top_items"] = {
            "data": _json(
                {
                    "labels": [name(i) for i in items],
                    "datasets": [_bar("Value, VAT included", [i.value for i in items], TOP_ITEMS_COLOUR)],
                }
            ),
            "options": _json(_options(stacked=False, horizontal=True, legend=False)),
            # Room for every label: two lines each when the business is named under the item.
            "height": 60 + len(items) * (40 if business_names else 28),
        }
    return result
