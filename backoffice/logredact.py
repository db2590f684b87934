"""Callback tokens out of the logs.

A till's callback token is the only secret in its Daraja callback URLs (/daraja/<token>/...,
integrations/urls.py): whoever knows it can post callbacks that are stored and processed. Paths get
logged in three places - gunicorn's access log (backoffice/gunicorn_conf.py), Caddy's
(deploy/Caddyfile, the same pattern as a log filter) and Django's own "Not Found: /daraja/..."
warnings (the filter below, on the console handler of settings.LOGGING) - so each replaces the
token with `***` before writing.
"""

from __future__ import annotations

import logging
import re

# The path segment after /daraja/ (tokens are URL-safe base64; anything up to the next / ? # space
# or quote is treated as one, percent-escapes included).
CALLBACK_TOKEN = re.compile(r"(/daraja/)[^/?#\s\"']+")
REDACTED = r"\1***"


def redact(text: str) -> str:
    """`text` with every callback token replaced by ***."""
    return CALLBACK_TOKEN.sub(REDACTED, text) if "/daraja/" in text else text


class RedactCallbackTokens(logging.Filter):
    """A logging filter: formats the record's message once, with callback tokens redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/daraja/" in message:
            record.msg = redact(message)
            record.args = None
        return True
