"""Ledger tasks. `ledger.*` tasks go to the default queue (celeryconf/config.py), i.e. worker-default,
the one worker that mounts the anchors volume (docker-compose.prod.yml)."""

from __future__ import annotations

import logging

from celery import shared_task

from accounts.anchors import AnchorError, anchor_write

logger = logging.getLogger(__name__)


@shared_task(name="ledger.anchor", time_limit=300, soft_time_limit=270)
def anchor_heads() -> None:
    """Append the heads that moved since the last anchor (hourly, on beat). Running twice is harmless:
    the second run finds every head unchanged and writes nothing."""
    run = anchor_write(source="beat")
    logger.info("ledger anchors: %s written, %s unchanged", len(run.written), run.unchanged)
    if run.refused:
        for reason in run.refused:
            logger.error("ledger anchor refused: %s", reason)
        raise AnchorError("; ".join(run.refused))
