"""The Celery reliability rules: what the configuration is, and what it refuses."""

from __future__ import annotations

import pytest

from celeryconf.app import LIMITS, app, task_time_limits
from celeryconf.config import Limits, ReliabilityError, build_config, check_reliability


def test_reliability_defaults_are_on() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == LIMITS.task_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.worker_max_tasks_per_child > 0
    assert conf.worker_max_memory_per_child > 0
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is False  # publishers stay cheap (docs/celery.md)
    assert conf.CELERY_DB_REUSE_MAX >= 10**6  # the Django fix-up must not close connections per task
    assert conf.worker_soft_shutdown_timeout > 0
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.broker_transport_options["visibility_timeout"] >= (
        LIMITS.task_time_limit + LIMITS.max_countdown + LIMITS.visibility_margin
    )


def test_queues_and_routing() -> None:
    assert {q.name for q in app.conf.task_queues} == {"payments", "default", "reports"}
    assert app.conf.task_default_queue == "default"
    router = app.amqp.router
    assert router.route({}, "payments.process_inbox")["queue"].name == "payments"
    assert router.route({}, "reports.trial_balance")["queue"].name == "reports"
    assert router.route({}, "jobs.run")["queue"].name == "default"


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (
            Limits(task_time_limit=900, task_soft_time_limit=870, max_countdown=600, visibility_timeout=1500),
            "visibility timeout 1500s is too short",
        ),
        (
            Limits(task_time_limit=60, task_soft_time_limit=60, max_countdown=0, visibility_timeout=3600),
            "soft time limit",
        ),
        (
            Limits(
                task_time_limit=60,
                task_soft_time_limit=50,
                max_countdown=0,
                visibility_timeout=3600,
                visibility_margin=0,
            ),
            "margin",
        ),
    ],
)
def test_configurations_that_could_redeliver_a_running_task_are_refused(limits: Limits, why: str) -> None:
    with pytest.raises(ReliabilityError, match=why):
        build_config("redis://127.0.0.1:6379/15", limits)


def test_a_task_time_limit_longer_than_the_visibility_timeout_is_refused() -> None:
    limits = Limits(task_time_limit=60, task_soft_time_limit=50, max_countdown=60, visibility_timeout=300)
    check_reliability(limits, {"reports.small": 100})
    with pytest.raises(ReliabilityError, match=r"reports\.huge"):
        check_reliability(limits, {"reports.small": 100, "reports.huge": 200})


def test_every_registered_task_fits_the_visibility_timeout() -> None:
    app.loader.import_default_modules()
    per_task = task_time_limits(app)
    assert per_task["payments.process_inbox"] == 60  # the payment task sets its own, and it is checked
    check_reliability(LIMITS, per_task)


def test_a_countdown_beyond_the_limit_is_refused_before_anything_is_sent() -> None:
    task = app.tasks["jobs.run"]
    with pytest.raises(ReliabilityError, match="countdown"):
        task.apply_async(args=(1,), countdown=LIMITS.max_countdown + 1)
