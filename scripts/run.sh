#!/usr/bin/env bash
# `make run`: the whole back office in the foreground (web, two workers, beat, Flower).
# Uses DATABASE_URL / REDIS_URL when set; otherwise starts an embedded PostgreSQL and Redis
# (pip packages) under var/local and stops them again on exit (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

started_local=0
cleanup() {
  if [ "$started_local" = 1 ]; then
    echo "Stopping the embedded PostgreSQL and Redis..." >&2
    python scripts/localservices.py stop --dir var/local >&2 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  eval "$(python scripts/localservices.py start --dir var/local)"
  started_local=1
  if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    echo "Could not start the embedded PostgreSQL / Redis (see the messages above)." >&2
    exit 1
  fi
fi
export DATABASE_URL REDIS_URL

# .env: the development settings for `python manage.py ...` in another shell (README, "Next to make run"),
# read by backoffice/settings.py; exported variables win over it. Written on the first start only, so its
# M-Pesa key stays the one the embedded database's till credentials are encrypted with. Never committed.
if [ ! -f .env ]; then
  mpesa_key="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
  (
    umask 077
    {
      echo "# Written by \`make run\` on its first start (scripts/run.sh); read by backoffice/settings.py."
      echo "# Variables exported in the shell win. Delete this file to have it written again."
      echo "DJANGO_DEBUG=1"
      if [ "$started_local" = 1 ]; then
        echo "# The embedded servers (var/local), up while \`make run\` runs."
        echo "DATABASE_URL=${DATABASE_URL}"
        echo "REDIS_URL=${REDIS_URL}"
      fi
      echo "MPESA_ENCRYPTION_KEY=${mpesa_key}"
      echo "DEMO_OWNER_PASSWORD=${DEMO_OWNER_PASSWORD:-owner-demo-2026}"
      echo "DEMO_STAFF_PASSWORD=${DEMO_STAFF_PASSWORD:-staff-demo-2026}"
    } >.env
  )
  echo "Wrote .env (development settings for manage.py in another shell; see README)." >&2
fi
# What .env sets and the shell does not (its demo passwords, say), for this script too.
eval "$(python -m backoffice.envfile)"

export DJANGO_DEBUG="${DJANGO_DEBUG:-1}"
export BACKOFFICE_PORT="${PORT:-8000}"
export FLOWER_PORT="${FLOWER_PORT:-5555}"
export FLOWER_URL="${FLOWER_URL:-http://127.0.0.1:${FLOWER_PORT}/}"
export DJANGO_ALLOWED_HOSTS="${DJANGO_ALLOWED_HOSTS:-127.0.0.1,localhost}"
export DEMO_OWNER_PASSWORD="${DEMO_OWNER_PASSWORD:-owner-demo-2026}"
export FLOWER_BASIC_AUTH="${FLOWER_BASIC_AUTH:-owner:${DEMO_OWNER_PASSWORD}}"

python manage.py migrate --noinput >/dev/null
# Till credentials stored under another key (e.g. before .env had one) move to .env's key; no-op otherwise.
python manage.py mpesa_reencrypt >/dev/null
python manage.py setup_demo
# A week of demo activity on the first start only (skipped once there is data).
python manage.py seed_demo --days 7 --if-empty

cat <<INFO

  Back office is starting:
    Admin   http://127.0.0.1:${BACKOFFICE_PORT}/admin/   login: owner / ${DEMO_OWNER_PASSWORD}
    Flower  ${FLOWER_URL}   login: ${FLOWER_BASIC_AUTH%%:*} / ${FLOWER_BASIC_AUTH#*:}
    Health  http://127.0.0.1:${BACKOFFICE_PORT}/healthz
  Ctrl-C stops everything.

INFO
# Not exec: the EXIT trap must run after honcho to stop the embedded servers.
honcho start -f Procfile
