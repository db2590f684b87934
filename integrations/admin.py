"""The admin site finds this app's pages here; they live in their integration's package."""

from integrations.mpesa import admin  # noqa: F401
