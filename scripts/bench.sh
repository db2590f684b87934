#!/usr/bin/env bash
# `make bench`: benchmarks on real PostgreSQL and Redis (embedded ones unless the URLs are set).
# Writes bench/results.json. Each benchmark uses scratch databases of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

started_local=0
cleanup() {
  if [ "$started_local" = 1 ]; then
    python scripts/localservices.py stop --dir var/bench-local >&2 || true
  fi
}
trap cleanup EXIT

if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  eval "$(python scripts/localservices.py start --dir var/bench-local --pg-port 54349 --redis-port 63819)"
  started_local=1
  if [ -z "${DATABASE_URL:-}" ]; then echo "Could not start the embedded servers." >&2; exit 1; fi
fi
export DATABASE_URL REDIS_URL DJANGO_DEBUG="${DJANGO_DEBUG:-1}"
python -m bench.run "$@"
