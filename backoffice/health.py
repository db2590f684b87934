"""/healthz: is every part of the back office up? JSON for people and probes; 503 when not.

Anyone gets only {"status": "ok"|"down"} (with 200/503): the details - which worker is missing,
database and broker error text - are for the owner (logged in as a superuser or holder of
tenancy.view_all_businesses) or a monitor presenting HEALTHZ_TOKEN (`Authorization: Bearer ...`,
or `?token=...` for probes that cannot set headers; the logs show it as ***). The details list the
open alerts too (docs/monitoring.md); they do not change the status.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from celeryconf.config import QUEUES
from celeryconf.heartbeat import BEAT_KEY, KEY_PREFIX, redis_client


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True}
    except Exception as exc:  # any failure means "down"; say why
        return {"ok": False, "error": str(exc)[:200]}


def _waiting_for_person() -> int | None:
    """M-Pesa callbacks parked for a person (inbox "needs a person"); None when the database is down."""
    from integrations.mpesa.selectors import inbox_waiting_for_person

    try:
        return inbox_waiting_for_person().count()
    except Exception:  # the database entry already says why
        return None


def _status_queries_waiting() -> int | None:
    """Lost confirmations left to a person (integrations.mpesa.selectors); None when the database is down."""
    from integrations.mpesa.selectors import status_queries_waiting_for_person

    try:
        return status_queries_waiting_for_person().count()
    except Exception:  # the database entry already says why
        return None


def _alerts() -> dict[str, Any] | None:
    """Open alerts (backoffice.alerts), and when the rules were last judged; None when the database is down."""
    from backoffice.alerts import alerts_checked_at
    from backoffice.models import Alert

    try:
        rows = [
            {
                "rule": a.rule.name,
                "check": a.rule.check_kind,
                "message": a.message,
                "value": a.value,
                "since": a.first_seen_at.isoformat(),
            }
            for a in Alert.objects.filter(resolved_at__isnull=True).select_related("rule").order_by("first_seen_at")
        ]
    except DatabaseError:
        return None
    checked = alerts_checked_at()
    return {
        "open": rows,
        "checked_seconds_ago": None if checked is None else round(time.time() - checked.timestamp(), 1),
    }


def _spool() -> dict[str, Any]:
    """The callback spool, from the disk: it answers while the database is down."""
    from integrations.mpesa.spool import spool_status

    try:
        return dict(spool_status())
    except OSError as exc:
        return {"error": str(exc)[:200]}


def _heartbeats(client: redis.Redis) -> tuple[dict[str, Any], dict[str, Any]]:
    queues: dict[str, Any] = {}
    for queue in QUEUES:
        workers = sorted(
            key.decode().rsplit(":", 1)[-1] for key in client.scan_iter(f"{KEY_PREFIX}:queue:{queue}:*", count=100)
        )
        queues[queue] = {"ok": bool(workers), "workers": workers}
    raw = client.get(BEAT_KEY)
    if raw is None:
        beat: dict[str, Any] = {"ok": False, "error": "no heartbeat from beat"}
    else:
        try:
            seen = json.loads(raw)
            beat = {"ok": True, "seconds_ago": round(time.time() - float(seen.get("at", 0)), 1)}
        except (ValueError, TypeError, AttributeError) as exc:  # a key written by something else: not beat's
            beat = {"ok": False, "error": f"unreadable heartbeat from beat: {exc}"[:200]}
    return queues, beat


def may_see_details(request: HttpRequest) -> bool:
    """The owner, or a request carrying HEALTHZ_TOKEN (compared in constant time)."""
    token = getattr(settings, "HEALTHZ_TOKEN", "")
    if token:
        header = request.headers.get("Authorization", "")
        given = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else request.GET.get("token", "")
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return True
    try:
        user = request.user
        return bool(
            user.is_authenticated
            and user.is_active
            and (user.is_superuser or user.has_perm("tenancy.view_all_businesses"))
        )
    except DatabaseError:  # the session and user live in the database; down, the answer stays short
        return False


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    body: dict[str, Any] = {"database": _database()}
    # Shown, but not part of "ok": parked payments are work for a person, not an outage. A 503 would
    # make probes restart or unroute a healthy web process and hide real outages behind a business
    # backlog; alert on this number instead (a person must look when it is above zero).
    body["payments_waiting_for_person"] = _waiting_for_person() if body["database"]["ok"] else None
    body["status_queries_waiting_for_person"] = _status_queries_waiting() if body["database"]["ok"] else None
    # Callbacks kept on disk while PostgreSQL was down: pending ones should be gone a minute after it
    # is back (an old "oldest_pending_seconds" with the database up means the import fails);
    # rejected ones wait for a person (docs/mpesa.md, "When PostgreSQL is down").
    body["spool"] = _spool()
    # Open alerts are listed, not judged here: they never turn "ok" into "down" by themselves. The
    # outages among them (a queue without a worker, beat gone, the broker or database down) are
    # checked live below and make the 503 already; the rest (disk, memory, backups, backlogs) are
    # for a person, and a probe that restarts or unroutes the web process would not fix them.
    # They are judged once a minute by a worker, so a stale row must not fail a live check either.
    body["alerts"] = _alerts() if body["database"]["ok"] else None
    client = redis_client()
    try:
        client.ping()
        body["broker"] = {"ok": True}
        body["queues"], body["beat"] = _heartbeats(client)
    except redis.RedisError as exc:
        down = {"ok": False, "error": f"broker down: {exc}"[:200]}
        body["broker"] = {"ok": False, "error": str(exc)[:200]}
        body["queues"] = {queue: dict(down) for queue in QUEUES}
        body["beat"] = dict(down)
    finally:
        client.close()
    ok = (
        body["database"]["ok"]
        and body["broker"]["ok"]
        and body["beat"]["ok"]
        and all(q["ok"] for q in body["queues"].values())
    )
    body["status"] = "ok" if ok else "down"
    body["version"] = getattr(settings, "APP_VERSION", "")
    if not may_see_details(request):
        body = {"status": body["status"]}
    return JsonResponse(body, status=200 if ok else 503)
