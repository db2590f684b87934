"""A development `.env` file: KEY=VALUE lines that fill in environment variables not already set.

`make run` (scripts/run.sh) writes `.env` at the repository root on its first start, so that
`python manage.py ...` in another shell finds the same database, Redis and keys without exporting
anything by hand. Environment variables always win over the file. DJANGO_ENV_FILE names another
file; set it to an empty value to read none (the test run does, so a developer's `.env` never
changes it). Production reads no file: the image leaves `.env*` out (.dockerignore) and compose
passes the environment.

Format: one KEY=VALUE per line; blank lines and lines starting with # are skipped; `export ` before
the key is allowed; one pair of matching quotes around the value is removed. No variable
expansion, no inline comments (a # inside a value is part of it), no multi-line values.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE_VARIABLE = "DJANGO_ENV_FILE"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """A line of the .env file is not KEY=VALUE."""


def parse_env_file(text: str, *, source: str = ".env") -> dict[str, str]:
    """The KEY=VALUE pairs of a .env text, in order; a repeated key keeps its last value."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key):
            # The line itself is not shown: it may hold a secret.
            raise EnvFileError(f"{source}, line {number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def env_file_path(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """The file to read: DJANGO_ENV_FILE if set (empty: none), else .env at the repository root."""
    environ = os.environ if environ is None else environ
    configured = environ.get(ENV_FILE_VARIABLE)
    if configured is None:
        return BASE_DIR / ".env"
    return Path(configured) if configured.strip() else None


def load_env_file(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Copy the file's values into `environ` (os.environ) where a variable is not set. Returns the
    file read, or None when there is none (a DJANGO_ENV_FILE that does not exist is an error)."""
    environ = os.environ if environ is None else environ
    path = env_file_path(environ)
    if path is None:
        return None
    if not path.is_file():
        if environ.get(ENV_FILE_VARIABLE):
            raise EnvFileError(f"{ENV_FILE_VARIABLE}={path}: no such file")
        return None
    for key, value in parse_env_file(path.read_text(encoding="utf-8"), source=str(path)).items():
        environ.setdefault(key, value)
    return path


def shell_exports(environ: MutableMapping[str, str] | None = None) -> str:
    """`export KEY='value'` lines for the file's values that `environ` does not set (scripts/run.sh)."""
    import shlex

    environ = dict(os.environ if environ is None else environ)
    before = set(environ)
    load_env_file(environ)
    return "".join(f"export {key}={shlex.quote(environ[key])}\n" for key in environ if key not in before)


if __name__ == "__main__":
    # `eval "$(python -m backoffice.envfile)"`: the shell gets what settings.py would read.
    print(shell_exports(), end="")  # noqa: T201 - the output is the point
