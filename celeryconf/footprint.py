"""Two libraries' start-up costs that Celery processes avoid (docs/worker-memory.md, measured there).

- `pdeathsig_through_ctypes()`: every pool process, as it starts, asks the kernel to SIGKILL it when
  the worker's main process dies (Celery's `process_initializer` -> `celery.platforms.set_pdeathsig`).
  billiard makes that one `prctl` call through cffi whenever cffi is installed (cryptography brings it),
  and cffi first parses the C declaration with pycparser: its parser and tables stay in the pool process,
  ~2 MB RSS (~2.5 MB PSS) in each one, again in every replacement. The same call through ctypes, which
  the worker has loaded anyway, costs nothing. Installed in every process that loads the Celery app
  (celeryconf/app.py), so a worker started any way gets it; only the prefork pool calls it.
- `crontab_time_zones_trim()`: django-celery-beat's `CrontabSchedule.timezone` (a django-timezone-field
  TimeZoneField) builds a ZoneInfo object for each of the ~600 time zones when its model class is
  defined, for the field's choices: ~2 MB in every process that sets Django up. Only forms use the
  choices (the admin's crontab page, in web processes); workers and beat read and write crontab rows
  without them, and a row in any zone still loads (`ZoneInfo(name)` on access). So in Celery processes
  (`settings.CELERY_PROCESS`) the field's choices are the project's own zones; web processes, `manage.py`
  and its migration checks keep the full list. Called from `CeleryConfConfig.__init__`: Django creates
  every app config before it imports any model.
"""

from __future__ import annotations

import ctypes
import sys

from django.conf import settings

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_pdeathsig(signum: int) -> None:
    """billiard.util.set_pdeathsig's ctypes branch (libc's prctl), raising OSError as billiard's does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_int(signum)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: errno {errno}")


def pdeathsig_through_ctypes() -> None:
    """Have Celery's pool processes set their parent-death signal through ctypes instead of cffi."""
    if not sys.platform.startswith("linux"):  # billiard raises OSError (ignored by Celery) elsewhere
        return
    from celery import platforms

    if not hasattr(platforms, "_set_pdeathsig"):
        raise RuntimeError("celery.platforms._set_pdeathsig is gone: check celeryconf/footprint.py against Celery")
    platforms._set_pdeathsig = _set_pdeathsig


def crontab_time_zones_trim() -> None:
    """Limit TimeZoneField's default choices (and the ZoneInfo objects built for them) to the project's zones."""
    from timezone_field.backends.zoneinfo import ZoneInfoBackend

    ZoneInfoBackend.base_tzstrs = {"UTC", settings.TIME_ZONE}
