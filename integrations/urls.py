"""Daraja's callback URLs (docs/mpesa.md). Mounted under /daraja/ by backoffice/urls.py.

Daraja refuses callback URLs containing mpesa, safaricom, exe, exec, cmd, sql or query.
"""

from django.urls import path

from integrations.mpesa import views

app_name = "daraja"

urlpatterns = [
    path("<str:token>/stk/", views.stk_callback, name="stk"),
    path("<str:token>/c2b/validate/", views.c2b_validation, name="c2b_validation"),
    path("<str:token>/c2b/confirm/", views.c2b_confirmation, name="c2b_confirmation"),
    path("<str:token>/result/<str:kind>/", views.result_callback, name="result"),
    path("<str:token>/timeout/<str:kind>/", views.timeout_callback, name="timeout"),
]
