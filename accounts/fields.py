"""The one money field of the back office: Kenyan shillings to the cent, never a float."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


class MoneyField(models.DecimalField):  # type: ignore[type-arg]
    """A DecimalField of 14 digits with 2 places (up to 999,999,999,999.99).

    Totals that add many amounts (daily account totals) pass a larger `max_digits`; the scale is
    always 2, so PostgreSQL stores 1.1 as 1.10 and every amount has one text form.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 14)
        kwargs.setdefault("decimal_places", 2)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        if kwargs.get("max_digits") == 14:
            del kwargs["max_digits"]
        if kwargs.get("decimal_places") == 2:
            del kwargs["decimal_places"]
        return name, path, args, kwargs


def to_money(value: object) -> Decimal:
    """Parse outside input as an exact amount: `Decimal(str(v))`, never through a float.

    Raises ValueError for anything that is not a finite number with at most two decimal places
    (1.005 is refused, not rounded: a silently rounded shilling is a money error).
    """
    if isinstance(value, float):
        # str(0.1) == "0.1": the shortest repr, which is what a person typed.
        value = str(value)
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except ArithmeticError as exc:
        raise ValueError(f"{value!r} is not an amount") from exc
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount")
    quantized = amount.quantize(CENT)
    if quantized != amount:
        raise ValueError(f"{value!r} has more than two decimal places")
    return quantized
