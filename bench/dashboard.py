"""Dashboard benchmark: the admin landing page on a seeded database (a year of demo activity).

`measure()` runs in a Django process pointed at a database that `manage.py seed_demo` filled (the
demo's owner and its water staff `maji` must exist); bench.operations calls it on its seeded year.
The page is asked of Django's WSGI handler directly, with a logged-in session cookie: the whole
server side (middleware, view, queries, templates) without a network, and without the test
client, whose template instrumentation copies the context at every include and would double the
time. Median of 5 views after a warm-up, and the queries of one more view:

  dashboard.owner_ms / dashboard.owner_queries            the owner, every business
  dashboard.owner_cpu_ms                                  the web process's CPU time of a view (the rest
                                                          of owner_ms is PostgreSQL and waiting: on a
                                                          busy machine this one moves less)
  dashboard.owner_business_ms / ..._queries               the owner, one business chosen (?business=)
  dashboard.staff_ms / dashboard.staff_queries            maji, his one business

Usage on a seeded database: DATABASE_URL=... .venv/bin/python -m bench.dashboard   (prints JSON)
"""

from __future__ import annotations

import io
import json
import statistics
import time
from typing import Any
from urllib.parse import urlencode


def measure() -> dict[str, float]:
    """Time the page for the owner (all, one business) and a staff member: figures, not asserts."""
    from django.contrib.auth.models import User
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from tenancy.models import Business

    handler = WSGIHandler()
    url = reverse("admin:index")
    one = Business.objects.order_by("name").values_list("pk", flat=True).first()
    cases = {
        "owner": ("owner", {}),
        "owner_business": ("owner", {"business": one}),
        "staff": ("maji", {}),
    }
    figures: dict[str, float] = {}
    for name, (username, query) in cases.items():
        client = Client()
        client.force_login(User.objects.get(username=username))  # only for its session cookie
        cookie = "; ".join(f"{morsel.key}={morsel.value}" for morsel in client.cookies.values())

        def view(query: dict[str, Any] = query, cookie: str = cookie) -> None:
            status: list[str] = []
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": url,
                "QUERY_STRING": urlencode(query),
                "SERVER_NAME": "localhost",
                "SERVER_PORT": "80",
                "HTTP_HOST": "localhost",
                "HTTP_COOKIE": cookie,
                "wsgi.input": io.BytesIO(b""),
                "wsgi.url_scheme": "http",
                "wsgi.errors": io.StringIO(),
            }

            def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
                status.append(code)
                return lambda data: None

            body = b"".join(handler(environ, start_response))
            assert status == ["200 OK"] and b'id="dashboard"' in body, status

        view()  # warm up: templates, permissions
        timings, cpu = [], []
        for _ in range(5):
            started, started_cpu = time.perf_counter(), time.process_time()
            view()
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        with CaptureQueriesContext(connection) as queries:  # counted apart: capturing costs time
            view()
        figures[f"dashboard.{name}_ms"] = round(statistics.median(timings), 1)
        figures[f"dashboard.{name}_cpu_ms"] = round(statistics.median(cpu), 1)
        figures[f"dashboard.{name}_queries"] = len(queries)
    return figures


if __name__ == "__main__":
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
    django.setup()
    print(json.dumps(measure(), indent=2))
