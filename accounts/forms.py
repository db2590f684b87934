"""Admin forms of the ledger: the manual journal, the period close and the report filters.

They only collect and check input; posting and closing are done by accounts.services.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from unfold.widgets import (
    UnfoldAdminDecimalFieldWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminTextInputWidget,
)

from accounts.fields import ZERO
from accounts.models import Account
from accounts.periods import COMPARISONS, CUSTOM, MONTH, PERIOD_KINDS, PREVIOUS, Period, period_containing
from accounts.services import LineSpec, idempotency_key_reserved
from tenancy.models import Business

ALL_BUSINESSES = "all"


class DateInput(UnfoldAdminTextInputWidget):
    """The browser's own date picker, styled like Unfold's inputs (no admin calendar scripts needed)."""

    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.format = "%Y-%m-%d"


def postable_accounts(businesses: QuerySet[Business]) -> QuerySet[Account]:
    """Active accounts without children of these businesses: the ones a line can post to."""
    children = Account.objects.filter(parent=OuterRef("pk"))
    return (
        Account.objects.filter(business__in=businesses, is_active=True)
        .exclude(Exists(children))
        .select_related("business")
        .order_by("business__name", "code")
    )


class AccountChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Account) -> str:
        return f"{obj.business.name} - {obj.code} {obj.name}"


class ManualJournalForm(forms.Form):
    business = forms.ModelChoiceField(queryset=Business.objects.none(), widget=UnfoldAdminSelectWidget)
    entry_date = forms.DateField(widget=DateInput, help_text="Business date; must be after the lock date.")
    memo = forms.CharField(max_length=255, widget=UnfoldAdminTextInputWidget)
    # Generated when the form is shown: submitting the same form twice posts once.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=200)

    def __init__(self, *args: Any, businesses: QuerySet[Business], **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"entry_date": timezone.localdate(), "idempotency_key": f"manual:{uuid.uuid4()}"})
        super().__init__(*args, **kwargs)
        self.fields["business"].queryset = businesses.order_by("name")  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        key = data.get("idempotency_key") or ""
        if idempotency_key_reserved(key):
            # A hidden field: said at the top of the form, with what to do.
            raise forms.ValidationError(
                f"This form carries the idempotency key {key.strip()!r}, which is reserved for the system's own "
                "postings (M-Pesa, sales, purchases...). Reload the page to get a new form and enter the entry again."
            )
        return data


class JournalLineForm(forms.Form):
    account = AccountChoiceField(queryset=Account.objects.none(), required=False, widget=UnfoldAdminSelectWidget)
    debit = forms.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal(0), required=False, widget=UnfoldAdminDecimalFieldWidget
    )
    credit = forms.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal(0), required=False, widget=UnfoldAdminDecimalFieldWidget
    )
    memo = forms.CharField(max_length=255, required=False, widget=UnfoldAdminTextInputWidget)

    def __init__(self, *args: Any, accounts: QuerySet[Account], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = accounts  # type: ignore[attr-defined]

    def is_blank(self) -> bool:
        data = self.cleaned_data
        return not data.get("account") and not data.get("debit") and not data.get("credit") and not data.get("memo")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.is_blank():
            return data
        if not data.get("account"):
            self.add_error("account", "Choose an account.")
        debit, credit = data.get("debit") or ZERO, data.get("credit") or ZERO
        if (debit > 0) == (credit > 0):
            raise forms.ValidationError("Enter a debit or a credit (one of them, not zero).")
        return data


class BaseJournalLineFormSet(forms.BaseFormSet):  # type: ignore[type-arg]
    def __init__(self, *args: Any, accounts: QuerySet[Account], **kwargs: Any) -> None:
        self.accounts = accounts
        super().__init__(*args, **kwargs)

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {**super().get_form_kwargs(index), "accounts": self.accounts}

    def line_specs(self) -> list[LineSpec]:
        specs = []
        for form in self.forms:
            if not form.cleaned_data or form.is_blank():  # type: ignore[attr-defined]
                continue
            data = form.cleaned_data
            specs.append(
                LineSpec(
                    account=data["account"],
                    debit=data.get("debit") or ZERO,
                    credit=data.get("credit") or ZERO,
                    memo=data.get("memo") or "",
                )
            )
        return specs

    def clean(self) -> None:
        if any(self.errors):
            return
        specs = self.line_specs()
        if len(specs) < 2:
            raise forms.ValidationError("A journal entry needs at least two lines.")
        debit = sum((s.debit for s in specs), ZERO)
        credit = sum((s.credit for s in specs), ZERO)
        if debit != credit:
            raise forms.ValidationError(f"Debits ({debit}) and credits ({credit}) differ by {debit - credit}.")


JournalLineFormSet = cast(
    type[BaseJournalLineFormSet],
    forms.formset_factory(JournalLineForm, formset=BaseJournalLineFormSet, extra=6, max_num=50),
)


class ClosePeriodForm(forms.Form):
    lock_date = forms.DateField(
        widget=DateInput,
        help_text="Close the books up to and including this date: nothing can be posted on or before it.",
    )


# Statements cover these years: a comparison a year or a period earlier always exists.
REPORT_FIRST_DAY, REPORT_LAST_DAY = dt.date(1900, 1, 1), dt.date(2999, 12, 31)


class ReportFilterForm(forms.Form):
    """Which business (or all of them, for the owner), which period and what to compare it with.

    The period is a day, month, quarter or year around the anchor date, or custom dates (From/To).
    A request with From/To but no period (old links) is a custom period.
    """

    business = forms.ChoiceField(widget=UnfoldAdminSelectWidget)
    period = forms.ChoiceField(choices=PERIOD_KINDS, required=False, widget=UnfoldAdminSelectWidget)
    anchor = forms.DateField(required=False, widget=DateInput, label="Date", help_text="Any day of the period.")
    date_from = forms.DateField(required=False, widget=DateInput, label="From")
    date_to = forms.DateField(required=False, widget=DateInput, label="To")
    compare = forms.ChoiceField(
        choices=COMPARISONS, required=False, widget=UnfoldAdminSelectWidget, label="Compare with"
    )

    def __init__(self, *args: Any, businesses: QuerySet[Business], consolidated: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(str(b.pk), b.name) for b in businesses.order_by("name")]
        if consolidated:
            choices.insert(0, (ALL_BUSINESSES, "All businesses (consolidated)"))
        self.fields["business"].choices = choices  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        for name in ("anchor", "date_from", "date_to"):
            day = data.get(name)
            if day is not None and not REPORT_FIRST_DAY <= day <= REPORT_LAST_DAY:
                self.add_error(name, f"Choose a date from {REPORT_FIRST_DAY.year} to {REPORT_LAST_DAY.year}.")
        if self.errors:
            return data
        kind = data.get("period") or (CUSTOM if data.get("date_from") or data.get("date_to") else MONTH)
        today = timezone.localdate()
        if kind == CUSTOM:
            date_to = data.get("date_to") or today
            date_from = data.get("date_from") or date_to.replace(day=1)
            if date_from > date_to:
                self.add_error("date_from", "From must be on or before To.")
                return data
            period = Period(CUSTOM, date_from, date_to)
        else:
            period = period_containing(kind, data.get("anchor") or today)
        data["period"] = kind
        data["compare"] = data.get("compare") or PREVIOUS
        data["resolved"] = period
        return data

    @property
    def resolved_period(self) -> Period:
        """The period asked for (valid forms only)."""
        return cast(Period, self.cleaned_data["resolved"])
