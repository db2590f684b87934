"""deploy/Caddyfile run by a real Caddy (when one is installed): its logs show no callback token.

The production file as it is, adapted to JSON by Caddy itself, with three changes for a test on
localhost: plain HTTP on a free port (SITE_DOMAIN), no admin endpoint, and the upstreams (web, flower)
pointed at a closed local port - so the request fails at the proxy and Caddy writes both its access
line and its error line, each carrying the request. The text checks are in tests/test_compose.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "Zk3_q-Tok3nThatIsSecret0123456789abcd"
CADDY = shutil.which("caddy")

# URI sent -> URI in Caddy's log (the encoded letters stay as sent, the token does not).
ENCODED = {
    f"/%64araja/{TOKEN}/c2b/confirm/": "/%64araja/***/c2b/confirm/",
    f"/daraja%2F{TOKEN}/stk/": "/daraja%2F***/stk/",
    f"/%64%61raja%2f{TOKEN}/stk/": "/%64%61raja%2f***/stk/",
    f"/healthz?%74oken={TOKEN}": "/healthz?%74oken=***",
}

pytestmark = pytest.mark.skipif(CADDY is None, reason="caddy is not installed (apt-get install caddy)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redirect_upstreams(node: Any, dial: str) -> None:
    if isinstance(node, dict):
        if "dial" in node:
            node["dial"] = dial
        for value in node.values():
            _redirect_upstreams(value, dial)
    elif isinstance(node, list):
        for value in node:
            _redirect_upstreams(value, dial)


def test_caddy_logs_show_no_callback_token(tmp_path: Path) -> None:
    assert CADDY is not None
    port, closed = _free_port(), _free_port()
    env = {**os.environ, "SITE_DOMAIN": f"http://127.0.0.1:{port}", "ACME_EMAIL": "owner@example.com"}
    env["HOME"] = env["XDG_DATA_HOME"] = env["XDG_CONFIG_HOME"] = str(tmp_path)
    adapted = subprocess.run(
        [CADDY, "adapt", "--config", str(ROOT / "deploy" / "Caddyfile"), "--adapter", "caddyfile"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}
    _redirect_upstreams(config["apps"]["http"], f"127.0.0.1:{closed}")
    (tmp_path / "caddy.json").write_text(json.dumps(config))

    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [CADDY, "run", "--config", str(tmp_path / "caddy.json")], env=env, stdout=stdout, stderr=stderr
        )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        status = None
        deadline = time.monotonic() + 30
        while status is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/daraja/{TOKEN}/c2b/confirm/?token={TOKEN}",
                headers={"Referer": f"https://office.example/daraja/{TOKEN}/stk/"},
            )
            try:
                opener.open(request, timeout=5)
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.2)
        assert status == 502  # web is not there: Caddy logs an error line with the request too
        # Percent-encoded forms Django routes like the plain ones (it decodes the path first).
        for path in ENCODED:
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open(urllib.request.Request(f"http://127.0.0.1:{port}{path}"), timeout=5)
            assert refused.value.code == 502, path
        deadline = time.monotonic() + 10
        while out.read_text().count('"status":502') < 1 + len(ENCODED) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    access, errors = out.read_text(), err.read_text()
    assert '"uri":"/daraja/***/c2b/confirm/?token=***"' in access
    assert '"uri":"/daraja/***/c2b/confirm/?token=***"' in errors  # http.log.error, through `log default`
    assert "https://office.example/daraja/***/stk/" in access
    for logged in ENCODED.values():
        assert f'"uri":"{logged}"' in access, logged
    assert access.count('"status":502') == 1 + len(ENCODED)
    assert TOKEN not in access + errors
