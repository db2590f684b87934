#!/usr/bin/env bash
# `make chaos`: faults injected into the whole stack under M-Pesa load (bench/chaos.py; docs/reliability.md).
# Starts its own stack as `make run` does (embedded servers in a temporary folder, free ports), so it can
# run beside a `make run`. Options through CHAOS_ARGS, e.g. CHAOS_ARGS="--faults pg_down,redis_kill".
# Exit status 1 when a callback was lost, doubled or left unanswered, or verify_ledger failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# shellcheck disable=SC2086
exec python -m bench.chaos ${CHAOS_ARGS:-}
