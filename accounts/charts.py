"""The default chart of accounts for each kind of business.

Each account has a stable `role` that services look it up by (accounts.selectors.account_for_role);
codes follow the usual ranges: 1 assets, 2 liabilities, 3 equity, 4 income, 5 cost of sales,
6 expenses. Group accounts (those with children) only total their children: nothing posts to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import AccountType
from tenancy.models import BusinessKind

ASSET, LIABILITY, EQUITY, INCOME, EXPENSE = (
    AccountType.ASSET,
    AccountType.LIABILITY,
    AccountType.EQUITY,
    AccountType.INCOME,
    AccountType.EXPENSE,
)


@dataclass(frozen=True)
class ChartAccount:
    code: str
    name: str
    type: AccountType
    role: str
    parent_role: str = ""


# Roles every business has; the rest of the product looks these up.
COMMON: tuple[ChartAccount, ...] = (
    ChartAccount("1000", "Cash and cash equivalents", ASSET, "group_cash"),
    ChartAccount("1010", "Cash on hand", ASSET, "cash", "group_cash"),
    ChartAccount("1020", "M-Pesa till clearing", ASSET, "mpesa_clearing", "group_cash"),
    ChartAccount("1030", "Bank", ASSET, "bank", "group_cash"),
    ChartAccount("1100", "Trade receivables", ASSET, "receivables"),
    ChartAccount("1200", "Inventory", ASSET, "inventory"),
    ChartAccount("1300", "VAT input (recoverable)", ASSET, "vat_input"),
    ChartAccount("2000", "Trade payables", LIABILITY, "payables"),
    ChartAccount("2100", "VAT output (payable)", LIABILITY, "vat_output"),
    ChartAccount("2300", "Customer deposits on open orders", LIABILITY, "customer_deposits"),
    ChartAccount("2900", "Suspense", LIABILITY, "suspense"),
    ChartAccount("3000", "Owner's equity", EQUITY, "owner_equity"),
    ChartAccount("3100", "Retained earnings", EQUITY, "retained_earnings"),
    ChartAccount("4000", "Sales", INCOME, "group_sales"),
    ChartAccount("5000", "Cost of sales", EXPENSE, "cost_of_sales"),
    ChartAccount("5100", "Stock count differences", EXPENSE, "stock_variance"),
    ChartAccount("6000", "Operating expenses", EXPENSE, "group_expenses"),
    ChartAccount("6010", "Rent", EXPENSE, "expense_rent", "group_expenses"),
    ChartAccount("6020", "Salaries and wages", EXPENSE, "expense_wages", "group_expenses"),
    ChartAccount("6030", "Electricity", EXPENSE, "expense_electricity", "group_expenses"),
    ChartAccount("6040", "Water and sewerage", EXPENSE, "expense_water", "group_expenses"),
    ChartAccount("6050", "Transport and fuel", EXPENSE, "expense_transport", "group_expenses"),
    ChartAccount("6060", "Repairs and maintenance", EXPENSE, "expense_repairs", "group_expenses"),
    ChartAccount("6070", "Licences and permits", EXPENSE, "expense_licences", "group_expenses"),
    ChartAccount("6080", "M-Pesa charges", EXPENSE, "mpesa_charges", "group_expenses"),
    ChartAccount("6090", "Other expenses", EXPENSE, "expense_other", "group_expenses"),
    ChartAccount("6800", "Cash over and short", EXPENSE, "cash_over_short", "group_expenses"),
    ChartAccount("6900", "Rounding differences", EXPENSE, "rounding", "group_expenses"),
)

BY_KIND: dict[str, tuple[ChartAccount, ...]] = {
    BusinessKind.WATER: (
        ChartAccount("2200", "Bottle deposits held", LIABILITY, "bottle_deposits"),
        ChartAccount("4010", "Bottled water sales", INCOME, "sales_bottled_water", "group_sales"),
        ChartAccount("4020", "Refill sales", INCOME, "sales_refill", "group_sales"),
        ChartAccount("4030", "Bottle and dispenser sales", INCOME, "sales_containers", "group_sales"),
        ChartAccount("4040", "Delivery charges", INCOME, "sales_delivery", "group_sales"),
        ChartAccount("6110", "Treatment and packaging materials", EXPENSE, "expense_packaging", "group_expenses"),
    ),
    BusinessKind.LAUNDRY: (
        ChartAccount("4010", "Wash and fold", INCOME, "sales_wash_fold", "group_sales"),
        ChartAccount("4020", "Dry cleaning", INCOME, "sales_dry_cleaning", "group_sales"),
        ChartAccount("4030", "Ironing", INCOME, "sales_ironing", "group_sales"),
        ChartAccount("4040", "Pickup and delivery", INCOME, "sales_delivery", "group_sales"),
        ChartAccount("6110", "Detergents and supplies", EXPENSE, "expense_detergents", "group_expenses"),
    ),
    BusinessKind.RETAIL_LPG: (
        ChartAccount("2200", "Cylinder deposits held", LIABILITY, "cylinder_deposits"),
        ChartAccount("4010", "LPG refills", INCOME, "sales_lpg_refill", "group_sales"),
        ChartAccount("4020", "Cylinder sales", INCOME, "sales_cylinders", "group_sales"),
        ChartAccount("4030", "Gas accessories", INCOME, "sales_accessories", "group_sales"),
        ChartAccount("4040", "Shop goods", INCOME, "sales_shop", "group_sales"),
    ),
}


def default_chart(kind: str) -> tuple[ChartAccount, ...]:
    """The default chart for a business kind: the common accounts plus the kind's own, by code."""
    return tuple(sorted(COMMON + BY_KIND.get(kind, ()), key=lambda a: a.code))
