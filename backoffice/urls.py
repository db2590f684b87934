from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from backoffice.daily_summary import daily_summary_view
from backoffice.health import healthz
from backoffice.system import system_view

# Explicit, for Celery processes, whose settings install the admin without autodiscovery: loading
# the URLconf (a task's first reverse()) registers every ModelAdmin there too. A no-op in web processes.
admin.autodiscover()

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # An admin page that belongs to no model (before admin.site.urls, which would answer 404).
    path("admin/daily-summary/", admin.site.admin_view(daily_summary_view), name="daily_summary"),
    path("admin/system/", admin.site.admin_view(system_view), name="system"),
    path("admin/", admin.site.urls),
    path("daraja/", include("integrations.urls")),
    path("", RedirectView.as_view(url=settings.ADMIN_INDEX_URL, permanent=False)),
]
