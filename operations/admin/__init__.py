"""The operations admin, one module per area (imported here so the admin site registers them)."""

from operations.admin import (  # noqa: F401
    closing,
    customers,
    laundry,
    purchases,
    sales,
    stock,
)
