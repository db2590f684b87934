"""Operations models, one module per area; everything is importable from `operations.models`."""

from operations.models.catalogue import (
    STOCKED_KINDS,
    VAT_PERCENT,
    CylinderState,
    Item,
    ItemKind,
    Supplier,
    TaxRate,
    Unit,
)
from operations.models.closing import ClosingStatus, DayClosing
from operations.models.core import Customer
from operations.models.laundry import OPEN_STATUSES, LaundryOrder, LaundryOrderLine, OrderStatus
from operations.models.purchases import (
    Expense,
    ExpenseCategory,
    PaidFrom,
    Purchase,
    PurchaseLine,
    SupplierPayment,
)
from operations.models.sales import (
    CustomerTransaction,
    CustomerTxKind,
    PaymentMethod,
    Sale,
    SaleLine,
    SaleStatus,
)
from operations.models.stock import (
    DocumentStatus,
    MovementKind,
    OpeningStock,
    ProductionBatch,
    ProductionInput,
    StockCount,
    StockCountLine,
    StockLevel,
    StockMovement,
)

__all__ = [
    "OPEN_STATUSES",
    "STOCKED_KINDS",
    "VAT_PERCENT",
    "ClosingStatus",
    "Customer",
    "CustomerTransaction",
    "CustomerTxKind",
    "CylinderState",
    "DayClosing",
    "DocumentStatus",
    "Expense",
    "ExpenseCategory",
    "Item",
    "ItemKind",
    "LaundryOrder",
    "LaundryOrderLine",
    "MovementKind",
    "OpeningStock",
    "OrderStatus",
    "PaidFrom",
    "PaymentMethod",
    "ProductionBatch",
    "ProductionInput",
    "Purchase",
    "PurchaseLine",
    "Sale",
    "SaleLine",
    "SaleStatus",
    "StockCount",
    "StockCountLine",
    "StockLevel",
    "StockMovement",
    "Supplier",
    "SupplierPayment",
    "TaxRate",
    "Unit",
]
