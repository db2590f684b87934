"""Loaded with `-p tests.envdefaults`, before Django's settings: test-run defaults for the environment.

- DJANGO_DEBUG=1: development settings (no HTTPS redirect for the test client); pytest-django
  still runs tests with DEBUG off.
- DJANGO_ENV_FILE empty: no `.env` file is read (a developer's, from `make run`, stays out of the tests).
- Redis: the tests (and the Celery workers they start) use database TEST_REDIS_DB (15 unless
  set) of the Redis in REDIS_URL, so a test run never touches the queues of a running back office.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("DJANGO_DEBUG", "1")
# A developer's .env (written by `make run`) never reaches the test run, nor the processes it starts:
# settings read no file when DJANGO_ENV_FILE is empty (backoffice/envfile.py).
os.environ["DJANGO_ENV_FILE"] = ""


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
_db = int(os.environ.get("TEST_REDIS_DB", "15"))
# Under pytest-xdist each process gets its own Redis database (gw0 -> 15, gw1 -> 14, ...), as
# pytest-django gives each its own test database, so their queues and heartbeats never mix.
_xdist = os.environ.get("PYTEST_XDIST_WORKER", "")
if _xdist.startswith("gw"):
    _db -= int(_xdist[2:])
os.environ["REDIS_URL"] = _with_db(_redis, str(_db))
os.environ.pop("CELERY_BROKER_URL", None)
