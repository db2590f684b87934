"""Callback tokens out of the logs.

A till's callback token is the only secret in its Daraja callback URLs (/daraja/<token>/...,
integrations/urls.py): whoever knows it can post callbacks that are stored and processed. Paths get
logged in three places - gunicorn's access log (backoffice/gunicorn_conf.py), Caddy's
(deploy/Caddyfile, the same pattern as a log filter) and Django's own "Not Found: /daraja/..."
warnings (the filter below, on the console handler of settings.LOGGING) - so each replaces the
token with `***` before writing. The same goes for /healthz's `?token=` (HEALTHZ_TOKEN).
"""

from __future__ import annotations

import logging
import re

# The path segment after /daraja/ (tokens are URL-safe base64; anything up to the next / ? # space
# or quote is treated as one, percent-escapes included), and the value of a `token` query parameter
# (/healthz?token=..., HEALTHZ_TOKEN).
SECRET_IN_URL = re.compile(r"(/daraja/)[^/?#\s\"']+|((?:^|[?&])token=)[^&#\s\"']*")
MASK = "***"


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + MASK


def redact(text: str) -> str:
    """`text` with every callback token (and ?token= value) replaced by ***."""
    if "/daraja/" not in text and "token=" not in text:
        return text
    return SECRET_IN_URL.sub(_mask, text)


class RedactCallbackTokens(logging.Filter):
    """A logging filter: formats the record's message once, with callback tokens redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True
