#!/usr/bin/env bash
# `make test`: lint, types, migrations check, deploy check, then pytest on real PostgreSQL and Redis.
# Uses DATABASE_URL / REDIS_URL when set; otherwise an embedded PostgreSQL and Redis under
# var/test-local (other ports than `make run`'s), stopped again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# A developer's .env (written by `make run`) is not read: the checks and tests run on this environment only.
export DJANGO_ENV_FILE=

started_local=0
cleanup() {
  if [ "$started_local" = 1 ]; then
    python scripts/localservices.py stop --dir var/test-local >&2 || true
  fi
}
trap cleanup EXIT

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  eval "$(python scripts/localservices.py start --dir var/test-local --pg-port 54339 --redis-port 63809)"
  started_local=1
  if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    echo "Could not start the embedded PostgreSQL / Redis (see the messages above)." >&2
    exit 1
  fi
fi
export DATABASE_URL REDIS_URL

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
DJANGO_DEBUG=1 mypy .
echo "== makemigrations --check"
DJANGO_DEBUG=1 python manage.py makemigrations --check --dry-run
echo "== check --deploy (production settings)"
DJANGO_DEBUG=0 DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
  MPESA_ENCRYPTION_KEY="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
  LEDGER_ANCHOR_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')" \
  DJANGO_ALLOWED_HOSTS=backoffice.example.com python manage.py check --deploy --fail-level WARNING
if [ "${1:-}" = "--lint-only" ]; then exit 0; fi
# The real-browser tests (tests/browser) drive the system's Chromium through Playwright; without one
# they are skipped (pytest says so too). tests/browser/support.py looks for it the same way.
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -n "$chromium" ] && [ -f "$chromium" ]; then
  echo "== browser tests: Chromium at $chromium"
else
  echo "== browser tests: skipped, no Chromium found (apt-get install chromium)"
fi
echo "== pytest"
# Three processes: most tests wait on real workers, Redis and PostgreSQL rather than on the CPU.
# Each gets its own test database and Redis database (tests/envdefaults.py).
python -m pytest -p no:cacheprovider --create-db -n "${PYTEST_PROCESSES:-3}" "$@"
