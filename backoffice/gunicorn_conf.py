"""Gunicorn settings for every web process: `gunicorn backoffice.wsgi --config python:backoffice.gunicorn_conf`.

Used by the Procfile (`make run`), the Dockerfile and docker-compose.prod.yml; their command lines
keep the other options (bind, workers, timeouts). What this adds: callback tokens never reach
gunicorn's logs. The access log line of a Daraja callback would otherwise carry the till's secret
(`POST /daraja/<token>/c2b/confirm/`), and so would "Error handling request /daraja/<token>/...".
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from gunicorn.glogging import Logger

from backoffice.logredact import RedactCallbackTokens, redact


class RedactingLogger(Logger):  # type: ignore[misc]
    """Gunicorn's logger with callback tokens replaced by *** in every access-log atom (request
    line, path, raw URI, referer, environ values) and in its error log."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: dt.timedelta) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        return {key: redact(value) if isinstance(value, str) else value for key, value in atoms.items()}

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # setup() runs again on a configuration reload (HUP): add the filter once.
        error_log: logging.Logger = self.error_log
        if not any(isinstance(f, RedactCallbackTokens) for f in error_log.filters):
            error_log.addFilter(RedactCallbackTokens())


logger_class = "backoffice.gunicorn_conf.RedactingLogger"
