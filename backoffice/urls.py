from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from backoffice.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("daraja/", include("integrations.urls")),
    path("", RedirectView.as_view(url=settings.ADMIN_INDEX_URL, permanent=False)),
]
