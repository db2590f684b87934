"""Celery for the back office: the app, queues and routing, reliability defaults, jobs.

`celery -A celeryconf ...` finds the app here, as Celery's Django guide does it; workers and beat start with
`python -m celeryconf worker|beat` (celeryconf/__main__.py), which runs the same commands on it.
"""

from celeryconf.app import app

__all__ = ["app"]
