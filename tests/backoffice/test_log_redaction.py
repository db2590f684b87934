"""Callback tokens (the secret of each Daraja callback URL) and ?token= values never reach the logs:
gunicorn's access and error logs (backoffice/gunicorn_conf.py) and Django's request warnings."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config

from backoffice.gunicorn_conf import RedactingLogger
from backoffice.logredact import RedactCallbackTokens, redact

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "Zk3_q-Tok3nThatIsSecret0123456789abcd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"POST /daraja/{TOKEN}/c2b/confirm/ HTTP/1.1", "POST /daraja/***/c2b/confirm/ HTTP/1.1"),
        (f"/daraja/{TOKEN}/result/reversal/", "/daraja/***/result/reversal/"),
        (f"https://office.example/daraja/{TOKEN}", "https://office.example/daraja/***"),
        (f'"GET /daraja/{TOKEN}" 404', '"GET /daraja/***" 404'),
        ("/healthz?token=abc&x=1", "/healthz?token=***&x=1"),
        ("token=abc", "token=***"),
        ("GET /admin/ HTTP/1.1", "GET /admin/ HTTP/1.1"),
        ("/healthz?notatoken=1", "/healthz?notatoken=1"),
        ("GET /admin/?q=caf%C3%A9 HTTP/1.1", "GET /admin/?q=caf%C3%A9 HTTP/1.1"),  # no secret: as it came
        # Percent-encoded forms Django routes like the plain ones: logged decoded, and redacted.
        (f"POST /%64araja/{TOKEN}/c2b/confirm/ HTTP/1.1", "POST /daraja/***/c2b/confirm/ HTTP/1.1"),
        (f"POST /daraja%2F{TOKEN}/stk/ HTTP/1.1", "POST /daraja/***/stk/ HTTP/1.1"),
        (f"POST /daraja%2f{TOKEN}%2Fstk/", "POST /daraja/***/stk/"),
        (f"/d%61r%61j%61/{TOKEN}/stk/", "/daraja/***/stk/"),
        (f"/daraja/%{ord(TOKEN[0]):02X}{TOKEN[1:]}/stk/", "/daraja/***/stk/"),
        (f"/healthz?%74oken={TOKEN}", "/healthz?token=***"),
        (f"/healthz?x=1&%74%6F%6B%65%6E={TOKEN}", "/healthz?x=1&token=***"),
        (f"/%2564araja/{TOKEN}/stk/", "/daraja/***/stk/"),  # encoded twice
        (f"/DARAJA/{TOKEN}/stk/ ?TOKEN={TOKEN}", "/DARAJA/***/stk/ ?TOKEN=***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert TOKEN not in redact(text)


def test_a_percent_encoded_callback_url_reaches_the_view(client: Any, db: None) -> None:
    """Why the encoded forms matter: Django decodes the path before routing, so /%64araja/<token>/
    is the callback URL (here an unknown token: the view's 404, not the router's)."""
    from django.urls import resolve

    assert resolve("/daraja/x/stk/").func.__name__ == "stk_callback"
    response = client.post("/%64araja/not-a-token/stk/", data=b"{}", content_type="application/json")
    assert response.status_code == 404
    assert response.resolver_match is not None and response.resolver_match.func.__name__ == "stk_callback"


def _logger(tmp_path: Path) -> RedactingLogger:
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("errorlog", str(tmp_path / "error.log"))
    return RedactingLogger(cfg)


def _request(path: str, query: str = "") -> tuple[Any, Any, dict[str, Any]]:
    raw_uri = f"{path}?{query}" if query else path
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": raw_uri,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "196.201.214.200",
        "HTTP_REFERER": f"https://office.example{path}",
        "HTTP_USER_AGENT": "Daraja",
    }
    req = SimpleNamespace(headers=[("HOST", "office.example"), ("REFERER", f"https://office.example{path}")])
    resp = SimpleNamespace(status="200 OK", sent=57, headers=[("Content-Type", "application/json")])
    return resp, req, environ


def test_the_gunicorn_logger_redacts_every_atom(tmp_path: Path) -> None:
    resp, req, environ = _request(f"/daraja/{TOKEN}/c2b/confirm/", f"token={TOKEN}")
    atoms = _logger(tmp_path).atoms(resp, req, environ, dt.timedelta(milliseconds=12))
    assert atoms["r"] == "POST /daraja/***/c2b/confirm/?token=*** HTTP/1.1"
    assert atoms["U"] == "/daraja/***/c2b/confirm/"
    assert atoms["q"] == "token=***"
    assert atoms["f"] == "https://office.example/daraja/***/c2b/confirm/"
    assert atoms["{raw_uri}e"] == "/daraja/***/c2b/confirm/?token=***"
    assert atoms["{referer}i"] == "https://office.example/daraja/***/c2b/confirm/"
    assert atoms["s"] == "200" and atoms["B"] == 57  # the rest as gunicorn gives it
    assert not [key for key, value in atoms.items() if TOKEN in str(value)]


def test_the_gunicorn_access_and_error_logs_redact(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    resp, req, environ = _request(f"/daraja/{TOKEN}/stk/")
    logger.access(resp, req, environ, dt.timedelta(milliseconds=3))
    logger.exception("Error handling request %s", f"/daraja/{TOKEN}/stk/")
    logger.setup(logger.cfg)  # a reload (HUP) does not stack the filter
    assert sum(isinstance(f, RedactCallbackTokens) for f in logger.error_log.filters) == 1
    for handler in logger.access_log.handlers + logger.error_log.handlers:
        handler.flush()
    access = (tmp_path / "access.log").read_text()
    error = (tmp_path / "error.log").read_text()
    assert '"POST /daraja/***/stk/ HTTP/1.1" 200' in access
    assert "Error handling request /daraja/***/stk/" in error
    assert TOKEN not in access + error


def test_django_request_warnings_are_redacted() -> None:
    record = logging.LogRecord(
        "django.request", logging.WARNING, __file__, 1, "Not Found: %s", (f"/daraja/{TOKEN}/x/",), None
    )
    assert RedactCallbackTokens().filter(record) is True
    assert record.getMessage() == "Not Found: /daraja/***/x/"


def test_gunicorn_logs_redact_percent_encoded_callback_urls(tmp_path: Path) -> None:
    resp, req, environ = _request(f"/%64araja/{TOKEN}/c2b/confirm/", f"%74oken={TOKEN}")
    atoms = _logger(tmp_path).atoms(resp, req, environ, dt.timedelta(milliseconds=12))
    assert atoms["r"] == "POST /daraja/***/c2b/confirm/?token=*** HTTP/1.1"
    assert not [key for key, value in atoms.items() if TOKEN in str(value)]


def test_the_console_handler_has_the_filter() -> None:
    from django.conf import settings

    assert "redact_callback_tokens" in settings.LOGGING["handlers"]["console"]["filters"]
    assert settings.LOGGING["loggers"]["django"]["handlers"] == []  # no unfiltered copy from Django's own


@pytest.mark.slow
def test_gunicorn_started_as_in_production_logs_no_token(tmp_path: Path) -> None:
    """The real server, with the command-line options of the Procfile: no log line shows the token."""
    access, error, output = tmp_path / "access.log", tmp_path / "error.log", tmp_path / "output.log"
    env = {**os.environ, "DJANGO_DEBUG": "1", "DJANGO_ENV_FILE": "", "PYTHONUNBUFFERED": "1"}
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "backoffice.wsgi", "--config", "python:backoffice.gunicorn_conf",
             "--bind", "127.0.0.1:0", "--workers", "1", "--no-control-socket",
             "--access-logfile", str(access), "--error-logfile", str(error), "--log-level", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", error.read_text() if error.exists() else "")
            port = match.group(1) if match else None
            time.sleep(0.1)
        assert port, f"gunicorn did not start: {output.read_text()} {error.read_text() if error.exists() else ''}"
        statuses = []
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost, never a proxy
        # GET on a callback URL: 405 from Django (logged by django.request) without touching the database.
        for path in (f"/daraja/{TOKEN}/stk/", f"/daraja/{TOKEN}/c2b/confirm/?token={TOKEN}"):
            deadline = time.monotonic() + 30
            while True:
                try:
                    opener.open(f"http://127.0.0.1:{port}{path}", timeout=10)
                except urllib.error.HTTPError as exc:
                    statuses.append(exc.code)
                    break
                except OSError:  # the worker is still booting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        assert statuses == [405, 405]
        deadline = time.monotonic() + 10
        while access.read_text().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    logs = access.read_text() + error.read_text() + output.read_text()
    assert '"GET /daraja/***/stk/ HTTP/1.1" 405' in logs
    assert '"GET /daraja/***/c2b/confirm/?token=*** HTTP/1.1" 405' in logs
    assert "Method Not Allowed (GET): /daraja/***/stk/" in logs
    assert TOKEN not in logs
