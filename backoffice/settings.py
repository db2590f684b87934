"""Settings for the back office, read from the environment (12-factor).

One module for every environment. Development defaults are safe to run locally; production
(`DJANGO_DEBUG=0`, the default) turns on every `check --deploy` protection and refuses to start
without a real secret key and M-Pesa encryption key. See README.md for the variables; in
development a `.env` file written by `make run` fills in the ones not exported (backoffice/envfile.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static
from django.urls import reverse_lazy

from backoffice.envfile import EnvFileError, load_env_file

# Lets admin and form classes be subscripted with their model types (for mypy) at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

# Development: `.env` (written by `make run`) fills in what the environment does not set.
try:
    load_env_file()
except EnvFileError as exc:
    raise ImproperlyConfigured(str(exc)) from exc


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    SECRET_KEY = "dev-only-insecure-key-never-used-in-production"  # noqa: S105


def fernet_keys(name: str) -> list[str]:
    """Comma-separated Fernet keys (urlsafe base64 of 32 bytes), checked here so a mistyped key stops
    the start instead of the first Daraja call. (cryptography itself is imported only on first use.)"""
    keys = env_list(name)
    for position, key in enumerate(keys, 1):
        try:
            valid = len(base64.urlsafe_b64decode(key.encode())) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise ImproperlyConfigured(
                f"{name}: key {position} is not a Fernet key (generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)."
            )
    return keys


# Till credentials at rest (integrations/mpesa/secrets.py): the first key encrypts, every key decrypts,
# so a new key is put first and the old one kept until `manage.py mpesa_reencrypt` has run. Independent
# of SECRET_KEY, which can then be rotated freely. Development without one uses a key derived from
# SECRET_KEY.
MPESA_ENCRYPTION_KEYS = fernet_keys("MPESA_ENCRYPTION_KEY")
if not MPESA_ENCRYPTION_KEYS and not DEBUG:
    raise ImproperlyConfigured(
        "MPESA_ENCRYPTION_KEY must be set when DJANGO_DEBUG is off (see docs/deploy.md, 'Secrets and key rotation')."
    )

# The ledger's hash-chain heads are anchored outside the database (accounts/anchors.py, docs/ledger.md):
# each anchor line carries an HMAC-SHA256 with this key, which the database never sees, so a database
# superuser can neither forge an anchor nor re-seal the chain unnoticed. Comma-separated: the first signs,
# every one verifies (keep an old key while anchors signed with it are kept). Development without one uses
# a key derived from SECRET_KEY.
LEDGER_ANCHOR_KEYS = env_list("LEDGER_ANCHOR_KEY")
if any(len(key) < 32 for key in LEDGER_ANCHOR_KEYS):
    raise ImproperlyConfigured(
        "LEDGER_ANCHOR_KEY: every key must be at least 32 characters "
        "(generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)."
    )
if not LEDGER_ANCHOR_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "LEDGER_ANCHOR_KEY must be set when DJANGO_DEBUG is off (see docs/deploy.md, 'Secrets and key rotation')."
        )
    LEDGER_ANCHOR_KEYS = ["dev-" + hmac.new(SECRET_KEY.encode(), b"ledger-anchor-key", hashlib.sha256).hexdigest()]
# Where `manage.py ledger_anchor` and its hourly task append anchors.jsonl: a volume of its own in production,
# never the database's, mounted into the worker that runs the task (docker-compose.prod.yml).
LEDGER_ANCHOR_DIR = Path(env_str("LEDGER_ANCHOR_DIR", str(BASE_DIR / "var" / "ledger-anchors")))

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

# True in `python -m celeryconf worker|beat` (how Procfile and compose start workers and beat,
# celeryconf/__main__.py), `celery ... worker|beat|flower` and `python -m celery ...`; DJANGO_ADMIN_AUTODISCOVER=1
# forces the admin's autodiscovery back on in them. With `python -m X`, sys.argv[0] is X's __main__.py, or "-m"
# while X's package is still being imported (then the interpreter's own command line, sys.orig_argv, names X).
_ARGV0 = Path(sys.argv[0] if sys.argv else "")
if sys.argv[:1] == ["-m"]:
    _MAIN_MODULE = next((b for a, b in zip(sys.orig_argv, sys.orig_argv[1:], strict=False) if a == "-m"), "")
else:
    _MAIN_MODULE = _ARGV0.parent.name if _ARGV0.name == "__main__.py" else ""
CELERY_PROCESS = (
    (_ARGV0.name == "celery" or _MAIN_MODULE in {"celery", "celeryconf"})
    and any(arg in {"worker", "beat", "flower"} for arg in sys.argv[1:])
    and not env_bool("DJANGO_ADMIN_AUTODISCOVER", False)
)

INSTALLED_APPS = [
    "unfold",
    "unfold.contrib.filters",
    "unfold.contrib.forms",
    "unfold.contrib.import_export",
    # Celery processes (workers, beat, Flower) serve no admin page: without autodiscovery they do not
    # import every admin module (and Unfold, import-export, openpyxl, ReportLab with them), ~10 MB
    # each (docs/worker-memory.md). backoffice/urls.py autodiscovers, so a task that reverses an admin
    # URL or reads the admin's registry (jobs/exports.py) loads the admin modules on first use.
    "django.contrib.admin.apps.SimpleAdminConfig" if CELERY_PROCESS else "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "import_export",
    "axes",
    "backoffice",
    "tenancy",
    "jobs",
    "operations",
    "accounts",
    "integrations",
    "celeryconf",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # "Your job finished": a message on the launcher's next admin page (jobs/notices.py).
    "jobs.middleware.JobNoticeMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "backoffice.urls"
WSGI_APPLICATION = "backoffice.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "backoffice" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL only: there is no SQLite code path (the ledger's guarantees live in PostgreSQL).
DATABASE_URL = env_str("DATABASE_URL")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. `make run` / `make test` set it (embedded PostgreSQL) "
        "or export it, e.g. postgresql://user@127.0.0.1:5432/backoffice."
    )
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    raise ImproperlyConfigured("Only PostgreSQL is supported (DATABASE_URL must be postgresql://...).")
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Server-side prepared statements for the cursors that ask for them: the ledger's posting statement
# (accounts/services.py) is then planned once per connection, not on every posting. Django's own
# queries bind client-side and are never prepared. Django turns them off by default for connection
# poolers in transaction mode (PgBouncer before 1.21): behind one, set DB_PREPARED_STATEMENTS=0.
if env_bool("DB_PREPARED_STATEMENTS", True):
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
DATABASES["default"].setdefault("TEST", {})["NAME"] = env_str("TEST_DATABASE_NAME") or None
# Two roles (docs/deploy.md, "Database roles"): the app connects as the application role (DATABASE_URL),
# which owns nothing; `migrate` runs as the owner role and `manage.py db_roles grant` then grants
# DATABASE_APP_ROLE its privileges. DATABASE_OWNER_URL (development and tests only, never in production's
# app containers) lets `manage.py flush` empty a database holding a ledger, which the app role cannot.
DATABASE_APP_ROLE = env_str("DATABASE_APP_ROLE")
DATABASE_OWNER_URL = env_str("DATABASE_OWNER_URL")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "backoffice",
    }
}

AUTHENTICATION_BACKENDS = [
    # django-axes first so a locked-out user is refused before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login throttling: five wrong passwords for a user from one address lock that pair for an hour.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_HOURS", 1)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "Africa/Nairobi"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
MEDIA_URL = "media/"
# Job results and attachments. They are served by permission-checking views, never publicly.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
# Job result files (reports, exports) are deleted this many days after they are made.
JOB_FILES_KEEP_DAYS = env_int("JOB_FILES_KEEP_DAYS", 7)
# Backups (backoffice/backups.py, docs/backups.md): dumps, media archives and their checksums, mode 0600.
BACKUP_DIR = Path(env_str("BACKUP_DIR", str(BASE_DIR / "var" / "backups")))
# The role that dumps (reads every table and sequence: pg_read_all_data) and restores the dump into a scratch
# database to prove it (CREATEDB). The application role may do neither; empty: DATABASE_URL (enough when that
# is a superuser or the tables' owner with CREATEDB, as in a single-role development database).
BACKUP_DATABASE_URL = env_str("BACKUP_DATABASE_URL")
# pg_dump/pg_restore of the server's major version; empty: found (backoffice.backups.pg_tools).
PG_BIN_DIR = env_str("PG_BIN_DIR")
# Rotation: good backups of this many most recent dates are kept per tier (daily, Sunday, first of the month).
BACKUP_KEEP_DAILY = env_int("BACKUP_KEEP_DAILY", 7)
BACKUP_KEEP_WEEKLY = env_int("BACKUP_KEEP_WEEKLY", 4)
BACKUP_KEEP_MONTHLY = env_int("BACKUP_KEEP_MONTHLY", 12)
# A last good backup older than this is "stale" (backup_status: the alerts and the morning email).
BACKUP_STALE_HOURS = env_int("BACKUP_STALE_HOURS", 26)
# Off-site copies (either, both or none): a mounted directory, and/or an S3-compatible bucket (boto3; the
# credentials come from boto3's own AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables).
BACKUP_OFFSITE_DIR = env_str("BACKUP_OFFSITE_DIR")
BACKUP_S3_BUCKET = env_str("BACKUP_S3_BUCKET")
BACKUP_S3_PREFIX = env_str("BACKUP_S3_PREFIX", "backoffice/")
BACKUP_S3_ENDPOINT_URL = env_str("BACKUP_S3_ENDPOINT_URL")
BACKUP_S3_REGION = env_str("BACKUP_S3_REGION")
# Daraja callbacks that arrive while PostgreSQL is down wait here (integrations/mpesa/spool.py). Web and the
# payments worker must see the same directory: a volume mounted into both in production (docs/deploy.md).
MPESA_SPOOL_DIR = Path(env_str("MPESA_SPOOL_DIR", str(BASE_DIR / "var" / "mpesa-spool")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# In development whitenoise serves straight from the apps' static folders (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "admin:login"
# A login without ?next= (the admin's login page posts none) lands on the dashboard, not /accounts/profile/.
LOGIN_REDIRECT_URL = "admin:index"

# Security. Production defaults are strict; behind the TLS proxy the scheme comes from X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# /healthz is probed over plain HTTP inside the compose network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_AGE = env_int("DJANGO_SESSION_SECONDS", 12 * 3600)

# Email: the console in development; SMTP from the environment in production (docs/emails.md).
# With EMAIL_HOST set and no EMAIL_BACKEND, the SMTP backend is used.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", EMAIL_PORT == 465)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend",
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "backoffice@localhost")
# A failing email is retried with backoff (1, 2, 4... minutes) this many times in all, then left "failed".
EMAIL_MAX_ATTEMPTS = env_int("EMAIL_MAX_ATTEMPTS", 5)
# The first retry's wait, doubled at each attempt (capped by CELERY_MAX_COUNTDOWN). Tests shorten it.
EMAIL_RETRY_BACKOFF_SECONDS = env_int("EMAIL_RETRY_BACKOFF_SECONDS", 60)

# django-import-export: importing needs the model's change right (scoped admins also ask for add),
# exporting its view right; without these every staff user could import (docs/permissions.md).
IMPORT_EXPORT_IMPORT_PERMISSION_CODE = "change"
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Django logs request paths ("Not Found: /daraja/<token>/..."): callback tokens are secrets.
    "filters": {"redact_callback_tokens": {"()": "backoffice.logredact.RedactCallbackTokens"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_callback_tokens"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # "django" without handlers of its own: Django's default console handler (DEBUG only) would print
    # every request warning a second time, unfiltered; it propagates to the root's console instead.
    "loggers": {"axes": {"level": "WARNING"}, "django": {"handlers": [], "level": "INFO", "propagate": True}},
}

# Celery is configured in celeryconf/config.py, from the same environment (CELERY_BROKER_URL or REDIS_URL).

# /healthz gives its details (per part, with error text) to the owner or to a monitor sending this token
# (`Authorization: Bearer <token>` or `?token=`); everyone else sees only {"status": ...}. Empty: owner only.
HEALTHZ_TOKEN = env_str("HEALTHZ_TOKEN")

# Flower (runs as its own process; the admin links to it).
FLOWER_URL = env_str("FLOWER_URL", "http://127.0.0.1:5555/")

# Unfold: theme, sidebar grouped by area, dashboard.
UNFOLD: dict[str, Any] = {
    "SITE_TITLE": "Back office",
    "SITE_HEADER": "Back office",
    "SITE_SYMBOL": "storefront",
    "SHOW_HISTORY": True,
    "SHOW_VIEW_ON_SITE": False,
    "ENVIRONMENT": "backoffice.dashboard.environment_callback",
    "DASHBOARD_CALLBACK": "backoffice.dashboard.dashboard_callback",
    "STYLES": [lambda request: static("backoffice/admin.css")],
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": False,
        "navigation": "backoffice.navigation.sidebar_navigation",
    },
}

# Where the admin lands, and what the sidebar links to for monitoring.
ADMIN_INDEX_URL = reverse_lazy("admin:index")
