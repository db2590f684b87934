"""M-Pesa settings: from Django settings when defined there, else from the environment.

- MPESA_TRUST_X_FORWARDED_FOR (default true: Caddy sits in front): take the callback's source IP
  from the first X-Forwarded-For hop instead of REMOTE_ADDR.
- MPESA_BASE_URL: override Daraja's base URL for every till (tests, demos: the fake Daraja).
- MPESA_CALLBACK_BASE_URL: public HTTPS base for callback URLs when a till has none.
- MPESA_ENCRYPTION_KEY: Fernet key(s) for stored credentials, read by settings.py into
  MPESA_ENCRYPTION_KEYS (see secrets.py).
- MPESA_BROKER_URL: send the views' processing tasks to this broker instead of Celery's own
  (tests that stop their own Redis; empty in production).
- MPESA_SWEEP_AGE_SECONDS (30): how old an unprocessed inbox row must be before the sweeper
  re-enqueues it, and how long since it was last enqueued.
- MPESA_LOCK_TIMEOUT_SECONDS (10): how long processing waits for a row, receipt or books lock
  before giving up; the task retries later.
- MPESA_BATCH_SECONDS (25): a task processing a batch of inbox rows starts no new row after this
  long and sends the rest on in a new message (below the payments tasks' 50 s soft time limit).
- MPESA_GROUP_SIZE (100): how many payment callbacks (STK callbacks, C2B confirmations) the
  payments task records in one transaction (inbox.inbox_process_group): its own rows, topped up
  with rows waiting in the inbox that no other task holds. 1: one row per transaction.
- MPESA_STATUS_MAX_ATTEMPTS (6): how many times the recovery job asks Transaction Status about a
  lost confirmation without a definite answer before it leaves the query to a person.
- MPESA_STATUS_RESULT_WAIT_SECONDS (600): how long a query Daraja took (or may have taken) waits
  for its result callback before the recovery job asks again.
- MPESA_MAX_ATTEMPTS (5): failed processing attempts of one inbox row (unexpected errors and
  transient ones alike) before it is parked as "needs a person" instead of being tried again.
- MPESA_SPOOL_DIR (var/mpesa-spool under the project): where callbacks go while PostgreSQL refuses
  them (spool.py); shared by the web processes and the payments worker (a volume in production).
- MPESA_SPOOL_MAX_FILES (5000) and MPESA_SPOOL_MAX_BYTES (209715200, 200 MiB): the spool takes no
  more callbacks beyond these (the request fails as it would without a spool).
- MPESA_SPOOL_REJECTED_MAX_FILES (1000) and MPESA_SPOOL_REJECTED_MAX_DAYS (30): each import deletes
  files of the spool's rejected/ older than that many days, then the oldest beyond that many files.
"""

from __future__ import annotations

import os

from django.conf import settings


def _get(name: str, default: str) -> str:
    value = getattr(settings, name, None)
    if value is None:
        return os.environ.get(name, default)
    return str(value)


def trust_x_forwarded_for() -> bool:
    value = getattr(settings, "MPESA_TRUST_X_FORWARDED_FOR", None)
    if isinstance(value, bool):
        return value
    raw = os.environ.get("MPESA_TRUST_X_FORWARDED_FOR", "1") if value is None else str(value)
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def base_url_override() -> str:
    return _get("MPESA_BASE_URL", "")


def callback_base_url() -> str:
    return _get("MPESA_CALLBACK_BASE_URL", "")


def broker_url_override() -> str:
    return _get("MPESA_BROKER_URL", "")


def sweep_age_seconds() -> int:
    return int(_get("MPESA_SWEEP_AGE_SECONDS", "30"))


def lock_timeout_seconds() -> float:
    return float(_get("MPESA_LOCK_TIMEOUT_SECONDS", "10"))


def batch_seconds() -> float:
    return float(_get("MPESA_BATCH_SECONDS", "25"))


def group_size() -> int:
    return max(1, int(_get("MPESA_GROUP_SIZE", "100")))


def status_max_attempts() -> int:
    return max(1, int(_get("MPESA_STATUS_MAX_ATTEMPTS", "6")))


def status_result_wait_seconds() -> int:
    return int(_get("MPESA_STATUS_RESULT_WAIT_SECONDS", "600"))


def max_attempts() -> int:
    return max(1, int(_get("MPESA_MAX_ATTEMPTS", "5")))


def spool_dir() -> str:
    return _get("MPESA_SPOOL_DIR", str(settings.BASE_DIR / "var" / "mpesa-spool"))


def spool_max_files() -> int:
    return max(1, int(_get("MPESA_SPOOL_MAX_FILES", "5000")))


def spool_max_bytes() -> int:
    return max(1, int(_get("MPESA_SPOOL_MAX_BYTES", str(200 * 1024 * 1024))))


def spool_rejected_max_files() -> int:
    return max(0, int(_get("MPESA_SPOOL_REJECTED_MAX_FILES", "1000")))


def spool_rejected_max_days() -> float:
    return max(0.0, float(_get("MPESA_SPOOL_REJECTED_MAX_DAYS", "30")))
