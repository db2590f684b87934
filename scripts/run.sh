#!/usr/bin/env bash
# `make run`: the whole back office in the foreground (web, three workers, beat, Flower: the Procfile).
# Uses DATABASE_URL / REDIS_URL when set; otherwise starts an embedded PostgreSQL and Redis
# (pip packages) under var/local and stops them again on exit (Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

# Where the embedded servers live and which ports they take (bench/stack.py runs a second stack beside
# yours with its own), and the development settings file (DJANGO_ENV_FILE, as backoffice/settings.py reads it).
LOCAL_DIR="${BACKOFFICE_LOCAL_DIR:-var/local}"
local_ports=()
if [ -n "${BACKOFFICE_LOCAL_PG_PORT:-}" ]; then local_ports+=(--pg-port "$BACKOFFICE_LOCAL_PG_PORT"); fi
if [ -n "${BACKOFFICE_LOCAL_REDIS_PORT:-}" ]; then local_ports+=(--redis-port "$BACKOFFICE_LOCAL_REDIS_PORT"); fi
ENV_FILE="${DJANGO_ENV_FILE-.env}"

started_local=0
cleanup() {
  if [ "$started_local" = 1 ]; then
    echo "Stopping the embedded PostgreSQL and Redis..." >&2
    python scripts/localservices.py stop --dir "$LOCAL_DIR" >&2 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  eval "$(python scripts/localservices.py start --dir "$LOCAL_DIR" "${local_ports[@]}")"
  started_local=1
  if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    echo "Could not start the embedded PostgreSQL / Redis (see the messages above)." >&2
    exit 1
  fi
fi
export DATABASE_URL REDIS_URL

# Two database roles, as in production (docs/deploy.md, "Database roles"): the embedded server's superuser
# `postgres` only creates them; migrations run as the owner role, every process as the application role,
# which may not disable the ledger's triggers, truncate or rewrite it. With your own DATABASE_URL, set
# DATABASE_OWNER_URL too for the same split (else everything runs as DATABASE_URL's role).
superuser_url=""
if [ "$started_local" = 1 ]; then
  superuser_url="$DATABASE_URL"
  DATABASE_OWNER_URL="${superuser_url/\/\/postgres@/\/\/backoffice_owner@}"
  DATABASE_URL="${superuser_url/\/\/postgres@/\/\/backoffice_app@}"
  # The backups dump as, and restore their scratch copy as, the embedded superuser (the application role may
  # neither read the ledger's sequences nor create databases; docs/backups.md). Its pg_dump is the package's.
  BACKUP_DATABASE_URL="${BACKUP_DATABASE_URL:-$superuser_url}"
  export DATABASE_URL DATABASE_OWNER_URL BACKUP_DATABASE_URL
fi

# .env: the development settings for `python manage.py ...` in another shell (README, "Next to make run"),
# read by backoffice/settings.py; exported variables win over it. Written on the first start only, so its
# M-Pesa key stays the one the embedded database's till credentials are encrypted with. Never committed.
if [ -n "$ENV_FILE" ] && [ ! -f "$ENV_FILE" ]; then
  mpesa_key="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
  (
    umask 077
    {
      echo "# Written by \`make run\` on its first start (scripts/run.sh); read by backoffice/settings.py."
      echo "# Variables exported in the shell win. Delete this file to have it written again."
      echo "DJANGO_DEBUG=1"
      if [ "$started_local" = 1 ]; then
        echo "# The embedded servers ($LOCAL_DIR), up while \`make run\` runs."
        echo "DATABASE_URL=${DATABASE_URL}"
        echo "DATABASE_OWNER_URL=${DATABASE_OWNER_URL}"
        echo "BACKUP_DATABASE_URL=${BACKUP_DATABASE_URL}"
        echo "REDIS_URL=${REDIS_URL}"
      fi
      echo "MPESA_ENCRYPTION_KEY=${mpesa_key}"
      echo "DEMO_OWNER_PASSWORD=${DEMO_OWNER_PASSWORD:-owner-demo-2026}"
      echo "DEMO_STAFF_PASSWORD=${DEMO_STAFF_PASSWORD:-staff-demo-2026}"
    } >"$ENV_FILE"
  )
  echo "Wrote $ENV_FILE (development settings for manage.py in another shell; see README)." >&2
elif [ -n "$ENV_FILE" ] && [ -n "$superuser_url" ] && grep -qxF "DATABASE_URL=${superuser_url}" "$ENV_FILE"; then
  # A .env from before the two roles: manage.py in another shell connects as the application role too.
  python - "$superuser_url" "$DATABASE_URL" "$DATABASE_OWNER_URL" "$ENV_FILE" <<'PY'
import sys
from pathlib import Path

old, app, owner, env_file = sys.argv[1:]
path = Path(env_file)
lines = [f"DATABASE_URL={app}" if line == f"DATABASE_URL={old}" else line for line in path.read_text().splitlines()]
if not any(line.startswith("DATABASE_OWNER_URL=") for line in lines):
    lines.append(f"DATABASE_OWNER_URL={owner}")
path.write_text("\n".join(lines) + "\n")
PY
  echo "Updated $ENV_FILE: DATABASE_URL is the application role now, DATABASE_OWNER_URL the owner's." >&2
fi
if [ "$started_local" = 1 ] && [ -n "$ENV_FILE" ] && [ -f "$ENV_FILE" ] && ! grep -q '^BACKUP_DATABASE_URL=' "$ENV_FILE"; then
  # A .env from before the backups: `manage.py backup_run` in another shell needs the backup connection too.
  echo "BACKUP_DATABASE_URL=${BACKUP_DATABASE_URL}" >>"$ENV_FILE"
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

if [ -n "$superuser_url" ]; then
  # Idempotent: creates the roles or resets their rights, and hands a database migrated by `postgres`
  # (before the two roles) over to the owner role.
  DATABASE_URL="$superuser_url" python manage.py db_roles setup --owner-role backoffice_owner \
    --app-role backoffice_app >/dev/null
fi
if [ -n "${DATABASE_OWNER_URL:-}" ]; then
  app_role="$(python -c 'import os, urllib.parse as u; print(u.unquote(u.urlsplit(os.environ["DATABASE_URL"]).username or ""))')"
  DATABASE_URL="$DATABASE_OWNER_URL" python manage.py migrate --noinput >/dev/null
  DATABASE_URL="$DATABASE_OWNER_URL" python manage.py db_roles grant --app-role "$app_role" >/dev/null
else
  python manage.py migrate --noinput >/dev/null
fi
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
# Not exec: the EXIT trap must run after the supervisor to stop the embedded servers. It restarts a process
# that dies (as docker compose does in production) and lists the processes in $LOCAL_DIR/processes.json.
mkdir -p "$LOCAL_DIR"
python scripts/supervise.py --procfile Procfile --state "$LOCAL_DIR/processes.json"
