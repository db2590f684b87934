"""The development .env file (backoffice/envfile.py): `make run` writes it, settings read it, the
environment wins, and the test run never reads one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from backoffice import envfile
from backoffice.envfile import EnvFileError, env_file_path, load_env_file, parse_env_file, shell_exports

ROOT = Path(__file__).resolve().parents[2]


def test_parse() -> None:
    text = """
# a comment
DJANGO_DEBUG=1
  export REDIS_URL = redis://127.0.0.1:63799/0
QUOTED="two words"
SINGLE='x'
PASSWORD=has#hash=and=equals
EMPTY=
DJANGO_DEBUG=0
"""
    assert parse_env_file(text) == {
        "DJANGO_DEBUG": "0",  # the last one wins
        "REDIS_URL": "redis://127.0.0.1:63799/0",
        "QUOTED": "two words",
        "SINGLE": "x",
        "PASSWORD": "has#hash=and=equals",
        "EMPTY": "",
    }


@pytest.mark.parametrize("line", ["just-a-secret-value", "BAD KEY=1", "=value", "1ABC=x"])
def test_a_line_that_is_not_key_value_is_an_error_that_does_not_echo_it(line: str) -> None:
    with pytest.raises(EnvFileError) as raised:
        parse_env_file(f"OK=1\n{line}\n", source="x/.env")
    assert str(raised.value) == "x/.env, line 2: expected KEY=VALUE"


def test_the_environment_wins_and_only_missing_variables_are_filled(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("DATABASE_URL=postgresql://from-file/db\nREDIS_URL=redis://from-file:1/0\n")
    environ = {"DJANGO_ENV_FILE": str(path), "DATABASE_URL": "postgresql://exported/db"}
    assert load_env_file(environ) == path
    assert environ["DATABASE_URL"] == "postgresql://exported/db"
    assert environ["REDIS_URL"] == "redis://from-file:1/0"
    assert shell_exports({"DJANGO_ENV_FILE": str(path), "REDIS_URL": "x"}) == (
        "export DATABASE_URL=postgresql://from-file/db\n"
    )


def test_which_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envfile, "BASE_DIR", tmp_path)
    assert env_file_path({}) == tmp_path / ".env"  # by default, the repository root's
    assert load_env_file({}) is None  # none there: nothing read, no error
    assert env_file_path({"DJANGO_ENV_FILE": ""}) is None
    (tmp_path / ".env").write_text("A=1\n")
    environ: dict[str, str] = {}
    load_env_file(environ)
    assert environ == {"A": "1"}
    with pytest.raises(EnvFileError, match="no such file"):
        load_env_file({"DJANGO_ENV_FILE": str(tmp_path / "missing.env")})


def test_the_test_run_reads_no_env_file() -> None:
    """tests/envdefaults.py: a developer's .env (from `make run`) stays out of the tests and their workers."""
    assert os.environ["DJANGO_ENV_FILE"] == ""
    assert env_file_path() is None


def _manage(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT")
    environ = {key: value for key, value in os.environ.items() if key in keep}
    environ.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_manage_py_runs_on_the_env_file_alone(tmp_path: Path) -> None:
    """`python manage.py ...` next to `make run`, with nothing exported: the .env file is enough."""
    from django.conf import settings

    key = Fernet.generate_key().decode()
    path = tmp_path / ".env"
    path.write_text(
        "# as scripts/run.sh writes it\n"
        "DJANGO_DEBUG=0\n"
        "DJANGO_SECRET_KEY=a-long-enough-secret-key-for-this-test-0123456789-abcdefghijklmnop\n"
        f"DATABASE_URL={os.environ['DATABASE_URL']}\n"
        f"REDIS_URL={settings.REDIS_URL}\n"
        f"MPESA_ENCRYPTION_KEY={key}\n"
        "LEDGER_ANCHOR_KEY=a-ledger-anchor-key-for-this-test-0123456789\n"
    )
    without = _manage("check", cwd=tmp_path, DJANGO_ENV_FILE="")
    assert without.returncode != 0 and "DJANGO_SECRET_KEY must be set" in without.stderr  # the newcomer's error

    shell = f"from django.conf import settings; print(settings.DEBUG, settings.MPESA_ENCRYPTION_KEYS == [{key!r}])"
    result = _manage("shell", "--no-imports", "-c", shell, cwd=tmp_path, DJANGO_ENV_FILE=str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False True"

    # The environment wins over the file.
    result = _manage("shell", "--no-imports", "-c", "from django.conf import settings; print(settings.DEBUG)",
                     cwd=tmp_path, DJANGO_ENV_FILE=str(path), DJANGO_DEBUG="1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
