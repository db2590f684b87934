"""Alert rules judged against the readings, their open alerts, and the emails they send.

`alerts_check()` (the backoffice.check_alerts task, every minute) reads the same numbers as the
System page (backoffice.readings), judges every rule, and for each one:
- firing, no open alert: opens one (Alert row; at most one open per rule, a database constraint);
- firing, open alert: updates its message, value and last_seen_at;
- clear, open alert: resolves it (resolved_at), with a notice if the alert had been emailed;
- numbers unavailable (their source is down): leaves the alert as it is;
- rule disabled: resolves its open alert, silently.
A firing rule is emailed (backoffice.emails.email_queue, kind "alert") at most once per
`email_every_minutes` per rule, whichever alert of the rule it is: a rule that flaps opens a new
alert each time but does not send a new email each time.

Safe to run twice at once and to retry: each rule is judged under a lock on its row, so two runs
never open two alerts nor send two emails for it; the email's (kind, period) is unique besides.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from backoffice.emails import email_queue, recipients_parse
from backoffice.models import (
    Alert,
    AlertCheck,
    AlertRule,
    BackupState,
    EmailKind,
    OwnerEmail,
    OwnerEmailKind,
    VerifyState,
)
from backoffice.readings import MB, Readings, failing_recently, first_line, readings_collect
from celeryconf.config import QUEUES
from tenancy.scoping import sees_all_businesses

logger = logging.getLogger(__name__)

CHECKED_AT_CACHE_KEY = "alerts:checked_at"
SYSTEM_PAGE_PATH = "/admin/system/"


@dataclass(frozen=True)
class RuleSpec:
    """What a kind of rule measures: the unit and bounds of its threshold, what its target names."""

    unit: str
    minimum: Decimal
    maximum: Decimal
    whole: bool = False  # a count: no decimals
    target: str = ""  # "queue": a queue name; "worker": the start of a worker's name; "": none
    advice: str = ""


RULE_SPECS: dict[str, RuleSpec] = {
    AlertCheck.QUEUE_DEPTH: RuleSpec(
        "messages",
        Decimal(0),
        Decimal(10**9),
        whole=True,
        target="queue",
        advice="Is the queue's worker up and working (System page, workers)? A stuck task holds it up: see its log.",
    ),
    AlertCheck.QUEUE_AGE: RuleSpec(
        "seconds",
        Decimal(1),
        Decimal(10**7),
        target="queue",
        advice="Nobody is taking messages off the queue in time: check its worker and what it is running.",
    ),
    AlertCheck.WORKER_MISSING: RuleSpec(
        "(not used)",
        Decimal(0),
        Decimal(0),
        target="queue",
        advice="Start the worker (docker compose ps / logs worker-...); nothing on that queue runs meanwhile.",
    ),
    AlertCheck.WORKER_MEMORY: RuleSpec(
        "MB",
        Decimal(1),
        Decimal(10**6),
        target="worker",
        advice="A leak or a big task: the pool process is recycled past CELERY_MAX_MEMORY_PER_CHILD_KB; "
        "a main process growing needs a restart of that worker.",
    ),
    AlertCheck.WORKER_RESTARTS: RuleSpec(
        "restarts",
        Decimal(0),
        Decimal(10**6),
        whole=True,
        target="worker",
        advice="A crash loop: read the worker's log (out of memory? a failing import?).",
    ),
    AlertCheck.HOST_MEMORY: RuleSpec(
        "MB",
        Decimal(1),
        Decimal(10**9),
        advice="Find the largest process (System page, docker stats); the OOM killer is near.",
    ),
    AlertCheck.DISK_FREE: RuleSpec(
        "%",
        Decimal("0.01"),
        Decimal("99.99"),
        advice="Free space: old backups, job files, Docker images (docker system prune).",
    ),
    AlertCheck.BACKUP_STALE: RuleSpec(
        "hours",
        Decimal(1),
        Decimal(24 * 400),
        advice="Backups have stopped or fail: see Backups in the admin and the backup task's failures.",
    ),
    AlertCheck.BACKUP_UNVERIFIED: RuleSpec(
        "hours allowed for the restore check",
        Decimal(0),
        Decimal(24 * 30),
        advice="The last backup did not restore cleanly (or was not checked): read its verification "
        "message, run a new backup.",
    ),
    AlertCheck.PAYMENTS_WAITING: RuleSpec(
        "payments",
        Decimal(0),
        Decimal(10**9),
        whole=True,
        advice="M-Pesa -> Callback inbox (Needs a person) and Receipt checks: settle them.",
    ),
    AlertCheck.PERIODIC_TASK_FAILED: RuleSpec(
        "failing tasks",
        Decimal(0),
        Decimal(10**6),
        whole=True,
        advice="System page: the task's traceback; fix the cause, then run it again (Periodic tasks, action).",
    ),
    AlertCheck.BEAT_MISSING: RuleSpec(
        "seconds since its last tick",
        Decimal(10),
        Decimal(10**7),
        advice="Start beat (docker compose ps / logs beat): no scheduled task is sent meanwhile.",
    ),
}


def alert_rule_validate(*, check_kind: str, threshold: Decimal | None, target: str, recipients: str) -> dict[str, str]:
    """What is wrong with a rule's settings, by field (empty: nothing). Used by the admin form."""
    errors: dict[str, str] = {}
    spec = RULE_SPECS.get(check_kind)
    if spec is None:
        return {"check_kind": "Unknown check."}
    if threshold is None:
        errors["threshold"] = "Required."
    elif not threshold.is_finite() or not spec.minimum <= threshold <= spec.maximum:
        errors["threshold"] = (
            "Not used by this check: leave it at 0."
            if spec.minimum == spec.maximum
            else f"Between {spec.minimum} and {spec.maximum} ({spec.unit})."
        )
    elif spec.whole and threshold != threshold.to_integral_value():
        errors["threshold"] = f"A whole number ({spec.unit})."
    if target:
        if spec.target == "queue" and target not in QUEUES:
            errors["target"] = f"One of the queues: {', '.join(QUEUES)} (empty: every queue)."
        elif spec.target == "worker" and (any(c.isspace() for c in target) or len(target) > 60):
            errors["target"] = "The start of a worker's name, e.g. 'reports' or 'payments@', without spaces."
        elif not spec.target:
            errors["target"] = "This check has no target: leave it empty."
    bad = []
    for address in recipients_parse(recipients):
        try:
            validate_email(address)
        except ValidationError:
            bad.append(address)
    if bad:
        errors["recipients"] = f"Not an email address: {', '.join(bad)}."
    return errors


@dataclass(frozen=True)
class Finding:
    """A rule's verdict: firing (with what to say) or clear."""

    firing: bool
    message: str = ""
    value: str = ""


CLEAR = Finding(firing=False)


def _mb(n: int) -> str:
    return f"{n / MB:,.0f} MB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _queues_of(rule: AlertRule) -> list[str]:
    return [rule.target] if rule.target else list(QUEUES)


def _queue_depth(rule: AlertRule, r: Readings) -> Finding | None:
    if r.queues is None:
        return None
    over = [q for name in _queues_of(rule) if (q := r.queues.get(name)) and q.depth > rule.threshold]
    if not over:
        return CLEAR
    worst = max(over, key=lambda q: q.depth)
    parts = [f"{q.name}: {q.depth} messages ({q.waiting} waiting, {q.unacked} taken)" for q in over]
    return Finding(True, f"Queue depth above {rule.threshold:.0f}: " + "; ".join(parts), str(worst.depth))


def _queue_age(rule: AlertRule, r: Readings) -> Finding | None:
    if r.queues is None:
        return None
    over = [
        q
        for name in _queues_of(rule)
        if (q := r.queues.get(name))
        and q.oldest_seconds is not None
        and Decimal(str(q.oldest_seconds)) > rule.threshold
    ]
    if not over:
        return CLEAR
    worst = max(over, key=lambda q: q.oldest_seconds or 0)
    parts = [f"{q.name} waits since {_duration(q.oldest_seconds or 0)}" for q in over]
    return Finding(
        True, f"Oldest message older than {rule.threshold:.0f} s: " + "; ".join(parts), f"{worst.oldest_seconds:.0f} s"
    )


def _worker_missing(rule: AlertRule, r: Readings) -> Finding | None:
    if r.broker_error:
        return Finding(True, f"The broker (Redis) does not answer: no worker can get work. {r.broker_error}", "broker")
    if r.workers is None:
        return None
    alive = {q for w in r.workers for q in w.queues}
    missing = [name for name in _queues_of(rule) if name not in alive]
    if not missing:
        return CLEAR
    return Finding(True, f"No worker consumes queue {', '.join(missing)}", ", ".join(missing))


def _workers_of(rule: AlertRule, r: Readings) -> list[Any]:
    return [w for w in (r.workers or []) if w.hostname.startswith(rule.target)]


def _worker_memory(rule: AlertRule, r: Readings) -> Finding | None:
    if r.workers is None:
        return None
    limit = rule.threshold * MB
    over = [(w, p) for w in _workers_of(rule, r) for p in w.processes if p.rss > limit]
    if not over:
        return CLEAR
    worst = max(over, key=lambda wp: wp[1].rss)
    parts = [f"{w.hostname} {p.role} process {p.pid}: {_mb(p.rss)}" for w, p in over]
    return Finding(True, f"Worker processes above {rule.threshold:.0f} MB: " + "; ".join(parts), _mb(worst[1].rss))


def _worker_restarts(rule: AlertRule, r: Readings) -> Finding | None:
    if r.workers is None:
        return None
    over = [w for w in _workers_of(rule, r) if w.restarts_last_hour > rule.threshold]
    if not over:
        return CLEAR
    worst = max(over, key=lambda w: w.restarts_last_hour)
    parts = [
        f"{w.hostname} restarted {w.restarts_last_hour} time{'s' if w.restarts_last_hour != 1 else ''}" for w in over
    ]
    return Finding(True, "In the last hour: " + "; ".join(parts), str(worst.restarts_last_hour))


def _host_memory(rule: AlertRule, r: Readings) -> Finding | None:
    if r.host is None:
        return None
    if r.host.memory_used <= rule.threshold * MB:
        return CLEAR
    return Finding(
        True,
        f"Host memory used {_mb(r.host.memory_used)} of {_mb(r.host.memory_total)} (limit {rule.threshold:.0f} MB)",
        _mb(r.host.memory_used),
    )


def _disk_free(rule: AlertRule, r: Readings) -> Finding | None:
    if r.host is None or not r.host.disks:
        return None
    low = [d for d in r.host.disks if Decimal(str(round(d.free_percent, 2))) < rule.threshold]
    if not low:
        return CLEAR
    worst = min(low, key=lambda d: d.free_percent)
    parts = [f"{d.label} ({d.path}): {d.free_percent:.1f}% free, {_mb(d.free)} of {_mb(d.total)}" for d in low]
    return Finding(True, f"Disk free below {rule.threshold}%: " + "; ".join(parts), f"{worst.free_percent:.1f}%")


def _backup_stale(rule: AlertRule, r: Readings) -> Finding | None:
    if r.backup is None:
        return None
    if r.backup.last_good_at is None:
        return Finding(True, "No backup has succeeded yet", "never")
    age = r.at - r.backup.last_good_at
    if Decimal(str(age.total_seconds())) <= rule.threshold * 3600:
        return CLEAR
    when = timezone.localtime(r.backup.last_good_at)
    return Finding(
        True,
        f"The last good backup finished {_duration(age.total_seconds())} ago ({when:%Y-%m-%d %H:%M})",
        f"{age.total_seconds() / 3600:.1f} h",
    )


def _backup_unverified(rule: AlertRule, r: Readings) -> Finding | None:
    b = r.backup
    if b is None:
        return None
    if b.last_id is None or b.last_state != BackupState.SUCCEEDED:
        return CLEAR  # no backup, or a failed one: the stale-backup rule speaks for it
    started = f"{timezone.localtime(b.last_started_at):%Y-%m-%d %H:%M}" if b.last_started_at else "?"
    if b.last_verify_state == VerifyState.FAILED:
        why = (b.last_verify_message or "no reason recorded").splitlines()[0][:200]
        return Finding(True, f"The backup of {started} failed its restore check: {why}", "failed")
    if b.last_verify_state == VerifyState.PENDING:
        waited = r.at - (b.last_finished_at or b.last_started_at or r.at)
        if Decimal(str(waited.total_seconds())) > rule.threshold * 3600:
            return Finding(
                True,
                f"The backup of {started} is not verified {_duration(waited.total_seconds())} after it finished",
                "pending",
            )
    return CLEAR


def _payments_waiting(rule: AlertRule, r: Readings) -> Finding | None:
    if r.mpesa is None:
        return None
    m = r.mpesa
    if m.payments_waiting <= rule.threshold:
        return CLEAR
    return Finding(
        True,
        f"M-Pesa work waiting for a person: {m.callbacks_waiting} held callbacks, "
        f"{m.status_queries_waiting} receipt checks",
        str(m.payments_waiting),
    )


def _periodic_task_failed(rule: AlertRule, r: Readings) -> Finding | None:
    if r.periodic is None:
        return None
    failing = [p for p in r.periodic if failing_recently(p, r.at)]
    if len(failing) <= rule.threshold:
        return CLEAR
    parts = [f"{p['name']} ({first_line(p['last_error']) or 'no exception recorded'})" for p in failing]
    return Finding(True, "Failed in the last 24 h, no success since: " + "; ".join(parts), str(len(failing)))


def _beat_missing(rule: AlertRule, r: Readings) -> Finding | None:
    if r.broker_error:
        return Finding(True, f"The broker (Redis) does not answer: beat cannot send. {r.broker_error}", "broker")
    if r.workers is None:  # the broker part was not read at all
        return None
    if r.beat is None:
        return Finding(True, "No heartbeat from beat: no scheduled task is being sent", "missing")
    if r.beat.last_tick_at is None:
        return CLEAR  # alive; this beat does not report its ticks
    age = (r.at - r.beat.last_tick_at).total_seconds()
    if Decimal(str(age)) <= rule.threshold:
        return CLEAR
    return Finding(True, f"Beat is alive but its scheduler last ticked {_duration(age)} ago", f"{age:.0f} s")


EVALUATORS: dict[str, Callable[[AlertRule, Readings], Finding | None]] = {
    AlertCheck.QUEUE_DEPTH: _queue_depth,
    AlertCheck.QUEUE_AGE: _queue_age,
    AlertCheck.WORKER_MISSING: _worker_missing,
    AlertCheck.WORKER_MEMORY: _worker_memory,
    AlertCheck.WORKER_RESTARTS: _worker_restarts,
    AlertCheck.HOST_MEMORY: _host_memory,
    AlertCheck.DISK_FREE: _disk_free,
    AlertCheck.BACKUP_STALE: _backup_stale,
    AlertCheck.BACKUP_UNVERIFIED: _backup_unverified,
    AlertCheck.PAYMENTS_WAITING: _payments_waiting,
    AlertCheck.PERIODIC_TASK_FAILED: _periodic_task_failed,
    AlertCheck.BEAT_MISSING: _beat_missing,
}


def rule_evaluate(*, rule: AlertRule, readings: Readings) -> Finding | None:
    """Firing or clear; None when the numbers this rule needs could not be read."""
    evaluator = EVALUATORS.get(rule.check_kind)
    return None if evaluator is None else evaluator(rule, readings)


def _recipients(rule: AlertRule) -> list[str]:
    own = recipients_parse(rule.recipients)
    if own:
        return own
    daily = OwnerEmail.objects.filter(kind=OwnerEmailKind.DAILY).first()
    return recipients_parse(daily.recipients) if daily else []


def _window_start(now: dt.datetime, minutes: int) -> dt.datetime:
    """The start of the `minutes`-long window (counted from the epoch) holding `now`."""
    size = max(1, minutes) * 60
    return dt.datetime.fromtimestamp(int(now.timestamp()) // size * size, tz=dt.UTC)


def _email_due(rule: AlertRule, now: dt.datetime) -> bool:
    last = rule.alerts.aggregate(last=Max("last_emailed_at"))["last"]
    return last is None or now - last >= dt.timedelta(minutes=max(1, rule.email_every_minutes))


def _email_firing(rule: AlertRule, alert: Alert, now: dt.datetime) -> None:
    spec = RULE_SPECS[rule.check_kind]
    since = timezone.localtime(alert.first_seen_at)
    body = "\n".join(
        [
            f"{rule.name}: {alert.message}",
            "",
            f"Value: {alert.value}"
            + (f" (threshold {rule.threshold} {spec.unit})" if spec.minimum != spec.maximum else ""),
            f"Since: {since:%Y-%m-%d %H:%M} (Nairobi)",
            f"What to do: {spec.advice}",
            "",
            f"The System page ({SYSTEM_PAGE_PATH}) shows every reading. While this stays firing you get "
            f"this email at most once every {rule.email_every_minutes} minutes.",
        ]
    )
    email_queue(
        kind=EmailKind.ALERT,
        period=f"{rule.pk}:{_window_start(now, rule.email_every_minutes).isoformat()}",
        subject=f"[Back office alert] {rule.name}: {alert.message}"[:255],
        recipients=_recipients(rule),
        body=body,
    )


def _email_resolved(rule: AlertRule, alert: Alert, now: dt.datetime) -> None:
    since = timezone.localtime(alert.first_seen_at)
    until = timezone.localtime(now)
    email_queue(
        kind=EmailKind.ALERT,
        period=f"{rule.pk}:resolved:{alert.pk}",
        subject=f"[Back office] Resolved: {rule.name}"[:255],
        recipients=_recipients(rule),
        body=(
            f"{rule.name} is clear again (firing from {since:%Y-%m-%d %H:%M} to {until:%H:%M}, Nairobi).\n"
            f"Last seen: {alert.message}\n\n"
            f"If it fires again within {rule.email_every_minutes} minutes of the last alert email, it is "
            f"shown on the System page and the dashboard but not emailed again before then."
        ),
    )


@dataclass
class CheckOutcome:
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    emailed: int = 0
    unknown: int = 0

    def __str__(self) -> str:
        return (
            f"opened {self.opened}, updated {self.updated}, resolved {self.resolved}, "
            f"emailed {self.emailed}, unknown {self.unknown}"
        )


def _open_alert(rule: AlertRule, finding: Finding, now: dt.datetime) -> tuple[Alert, bool]:
    """The rule's open alert, updated, or a new one. The constraint alert_one_open_per_rule is
    the last word: a concurrent insert loses and updates the winner's row instead."""
    fields = {"message": finding.message[:500], "value": finding.value[:100], "last_seen_at": now}
    alert = rule.alerts.filter(resolved_at__isnull=True).first()
    if alert is None:
        try:
            with transaction.atomic():
                return Alert.objects.create(rule=rule, first_seen_at=now, **fields), True
        except IntegrityError:
            alert = rule.alerts.get(resolved_at__isnull=True)
    for name, value in fields.items():
        setattr(alert, name, value)
    alert.save(update_fields=list(fields))
    return alert, False


def _check_rule(rule_id: int, readings: Readings, now: dt.datetime, outcome: CheckOutcome) -> None:
    with transaction.atomic():
        rule = AlertRule.objects.select_for_update().filter(pk=rule_id).first()
        if rule is None:  # deleted meanwhile
            return
        current = rule.alerts.filter(resolved_at__isnull=True).first()
        if not rule.enabled:
            if current is not None:
                current.resolved_at = now
                current.save(update_fields=["resolved_at"])
                outcome.resolved += 1
            return
        finding = rule_evaluate(rule=rule, readings=readings)
        if finding is None:
            outcome.unknown += 1
            return
        if finding.firing:
            alert, created = _open_alert(rule, finding, now)
            outcome.opened += created
            outcome.updated += not created
            if _email_due(rule, now):
                _email_firing(rule, alert, now)
                alert.last_emailed_at = now
                alert.save(update_fields=["last_emailed_at"])
                outcome.emailed += 1
        elif current is not None:
            current.resolved_at = now
            current.save(update_fields=["resolved_at"])
            outcome.resolved += 1
            if current.last_emailed_at is not None:
                _email_resolved(rule, current, now)
                outcome.emailed += 1


def alerts_check(*, now: dt.datetime | None = None, readings: Readings | None = None) -> CheckOutcome:
    """Judge every rule against `readings` (read now when not given) and open, update, resolve and
    email alerts accordingly. Safe to run concurrently and to retry (see the module's docstring)."""
    now = now or timezone.now()
    if readings is None:
        readings = readings_collect(now=now)
    outcome = CheckOutcome()
    for rule_id in AlertRule.objects.order_by("pk").values_list("pk", flat=True):
        _check_rule(rule_id, readings, now, outcome)
    try:
        cache.set(CHECKED_AT_CACHE_KEY, now.timestamp(), timeout=24 * 3600)
    except Exception as exc:  # Redis down: the page says "unknown"; the check itself is done
        logger.warning("alert check time not recorded: %s", exc)
    return outcome


def alerts_checked_at() -> dt.datetime | None:
    """When alerts_check last finished (kept a day in the cache); None: unknown."""
    try:
        stamp = cache.get(CHECKED_AT_CACHE_KEY)
    except Exception:
        return None
    return None if stamp is None else dt.datetime.fromtimestamp(float(stamp), tz=dt.UTC)


def open_alerts(user: Any) -> QuerySet[Alert]:
    """Open alerts this user may see: all of them for the owner; none for staff (every rule watches
    the whole system - queues, disk, backups, every till's payments - not one business)."""
    if not getattr(user, "is_authenticated", False) or not sees_all_businesses(user):
        return Alert.objects.none()
    return Alert.objects.filter(resolved_at__isnull=True).select_related("rule").order_by("-first_seen_at", "-id")
