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
from urllib.parse import unquote

# The path segment after /daraja/ (tokens are URL-safe base64; anything up to the next / ? # space
# or quote is treated as one, percent-escapes included), and the value of a `token` query parameter
# (/healthz?token=..., HEALTHZ_TOKEN). Any case: over-masking a log line costs nothing.
SECRET_IN_URL = re.compile(r"(/daraja/)[^/?#\s\"']+|((?:^|[?&])token=)[^&#\s\"']*", re.IGNORECASE)
MASK = "***"
# Percent-decoding rounds tried (Django decodes a path once; more only costs a little on lines with %).
_DECODE_ROUNDS = 3


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + MASK


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    return "daraja" in lowered or "token=" in lowered


def _decoded(text: str) -> str:
    """`text` percent-decoded until it no longer changes (at most _DECODE_ROUNDS times)."""
    for _ in range(_DECODE_ROUNDS):
        if "%" not in text:
            break
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def redact(text: str) -> str:
    """`text` with every callback token (and ?token= value) replaced by ***.

    Django routes `/%64araja/<token>/...` and `/daraja%2F<token>/...` to the callback views, and reads
    `?%74oken=` as `token`: when the percent-decoded text holds a token, the decoded text is what is
    logged, redacted (the encoded form could hide the token from the pattern).
    """
    if "%" in text:
        decoded = _decoded(text)
        if decoded != text and _may_hold_secret(decoded) and SECRET_IN_URL.search(decoded):
            text = decoded
    if not _may_hold_secret(text):
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
