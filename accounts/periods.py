"""Reporting periods: a day, month, quarter or year around an anchor date (or custom dates), and the
period a statement is compared with (the previous one, or the same period a year earlier).

Pure date arithmetic, no database: the report pages, the PDF jobs and the tests share it.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from typing import Any

DAY, MONTH, QUARTER, YEAR, CUSTOM = "day", "month", "quarter", "year", "custom"
PERIOD_KINDS = [(DAY, "Day"), (MONTH, "Month"), (QUARTER, "Quarter"), (YEAR, "Year"), (CUSTOM, "Custom dates")]

PREVIOUS, LAST_YEAR, NO_COMPARISON = "previous", "last_year", "none"
COMPARISONS = [(PREVIOUS, "Previous period"), (LAST_YEAR, "Same period last year"), (NO_COMPARISON, "No comparison")]


@dataclass(frozen=True)
class Period:
    """Dates from `date_from` to `date_to`, both included."""

    kind: str
    date_from: dt.date
    date_to: dt.date

    def __post_init__(self) -> None:
        if self.date_from > self.date_to:
            raise ValueError(f"a period cannot start ({self.date_from}) after it ends ({self.date_to})")

    @property
    def days(self) -> int:
        return (self.date_to - self.date_from).days + 1

    @property
    def label(self) -> str:
        """ "Jan 2026", "Q1 2026", "2026", "5 Jan 2026" or "1 Jan 2026 to 15 Jan 2026"."""
        start = self.date_from
        if self.kind == DAY:
            return day_text(start)
        if self.kind == MONTH:
            return start.strftime("%b %Y")
        if self.kind == QUARTER:
            return f"Q{(start.month - 1) // 3 + 1} {start.year}"
        if self.kind == YEAR:
            return str(start.year)
        if self.date_from == self.date_to:
            return day_text(start)
        return f"{day_text(self.date_from)} to {day_text(self.date_to)}"

    @property
    def slug(self) -> str:
        """For file names: "2026-01-05", "2026-01", "2026-q1", "2026", "2026-01-01-to-2026-01-15"."""
        start = self.date_from
        if self.kind == DAY:
            return start.isoformat()
        if self.kind == MONTH:
            return start.strftime("%Y-%m")
        if self.kind == QUARTER:
            return f"{start.year}-q{(start.month - 1) // 3 + 1}"
        if self.kind == YEAR:
            return str(start.year)
        return f"{self.date_from.isoformat()}-to-{self.date_to.isoformat()}"

    @property
    def dates(self) -> str:
        """ "1 Jan 2026 to 31 Jan 2026" (or one day)."""
        if self.date_from == self.date_to:
            return day_text(self.date_from)
        return f"{day_text(self.date_from)} to {day_text(self.date_to)}"

    def params(self) -> dict[str, str]:
        """The period as job parameters (JSON); `period_from_params` reads them back."""
        return {"period": self.kind, "date_from": self.date_from.isoformat(), "date_to": self.date_to.isoformat()}


def day_text(day: dt.date) -> str:
    """2026-01-05 -> "5 Jan 2026", as the statements print a day."""
    return f"{day.day} {day:%b %Y}"


def _month_end(year: int, month: int) -> dt.date:
    return dt.date(year, month, calendar.monthrange(year, month)[1])


def period_containing(kind: str, anchor: dt.date) -> Period:
    """The day, month, quarter or year that holds `anchor`."""
    if kind == DAY:
        return Period(DAY, anchor, anchor)
    if kind == MONTH:
        return Period(MONTH, anchor.replace(day=1), _month_end(anchor.year, anchor.month))
    if kind == QUARTER:
        first = 3 * ((anchor.month - 1) // 3) + 1
        return Period(QUARTER, dt.date(anchor.year, first, 1), _month_end(anchor.year, first + 2))
    if kind == YEAR:
        return Period(YEAR, dt.date(anchor.year, 1, 1), dt.date(anchor.year, 12, 31))
    raise ValueError(f"unknown period kind {kind!r}")


def _year_earlier(day: dt.date) -> dt.date:
    """The same day a year earlier; 29 Feb becomes 28 Feb."""
    try:
        return day.replace(year=day.year - 1)
    except ValueError:
        return day.replace(year=day.year - 1, day=28)


def comparison_period(period: Period, compare: str) -> Period | None:
    """The period to compare `period` with; None for no comparison.

    "previous": the day, month, quarter or year before (a custom range: as many days, ending the day
    before it starts). "last_year": the same day, month, quarter or year a year earlier (a custom
    range: both dates a year earlier; 29 Feb counts as 28 Feb).
    """
    if compare == NO_COMPARISON:
        return None
    if compare == PREVIOUS:
        if period.kind == CUSTOM:
            end = period.date_from - dt.timedelta(days=1)
            return Period(CUSTOM, end - dt.timedelta(days=period.days - 1), end)
        return period_containing(period.kind, period.date_from - dt.timedelta(days=1))
    if compare == LAST_YEAR:
        if period.kind == CUSTOM:
            return Period(CUSTOM, _year_earlier(period.date_from), _year_earlier(period.date_to))
        return period_containing(period.kind, _year_earlier(period.date_from))
    raise ValueError(f"unknown comparison {compare!r}")


def period_from_params(params: dict[str, Any]) -> tuple[Period, str]:
    """The period and comparison of job parameters written by `Period.params()` (+ "compare")."""
    kind = params.get("period") or CUSTOM
    date_from = dt.date.fromisoformat(params["date_from"])
    date_to = dt.date.fromisoformat(params["date_to"])
    period = Period(kind, date_from, date_to) if kind == CUSTOM else period_containing(kind, date_from)
    if kind != CUSTOM and (period.date_from, period.date_to) != (date_from, date_to):
        raise ValueError(f"{date_from} to {date_to} is not a {kind}")
    compare = params.get("compare") or PREVIOUS
    if compare not in dict(COMPARISONS):
        raise ValueError(f"unknown comparison {compare!r}")
    return period, compare
