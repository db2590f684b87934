"""Celery for the back office: the app, queues and routing, reliability defaults, jobs.

`celery -A celeryconf worker` finds the app here, as Celery's Django guide does it.
"""

from celeryconf.app import app

__all__ = ["app"]
