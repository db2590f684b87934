#!/bin/sh
# Ledger anchors beside a dump, for the `backup` service (postgres:16-alpine: psql, sha256sum, od; no Python).
#
#   ledger-anchors.sh OUTPUT [HISTORY]
#
# Writes OUTPUT: a copy of HISTORY (the anchors file the hourly task appends to, mounted read-only) if it
# exists, then one signed anchor per business for the heads the database has now - the same lines as
# accounts/anchors.py writes (docs/ledger.md, "What a superuser could still do"). backup.sh runs it just
# BEFORE pg_dump, so every anchor in OUTPUT is a head the dump contains: after a restore,
# `verify_ledger --anchors OUTPUT` checks the restored chains against them.
#
# The HMAC-SHA256 is computed here, in the shell, with the first key of LEDGER_ANCHOR_KEY: the key never
# reaches the database server (pgcrypto's hmac() would send it there, where a superuser can log it).
# Connection: the libpq variables PGHOST, PGUSER, PGPASSWORD, PGDATABASE.
set -eu

# Each business's head: keep in step with HEADS_SQL in accounts/anchors.py (tests/test_backup_anchors.py).
HEADS_SQL="
SELECT b.business_id, e.number, s.hash
  FROM accounts_books b
 CROSS JOIN LATERAL (SELECT id, number FROM accounts_journalentry
                      WHERE business_id = b.business_id ORDER BY number DESC LIMIT 1) e
  JOIN accounts_entryseal s ON s.entry_id = e.id
 ORDER BY b.business_id"

# The bytes of hex string $1, each XORed with $2, as printf octal escapes (\ooo).
xor_escapes() {
    rest=$1
    out=
    while [ -n "$rest" ]; do
        tail=${rest#??}
        pair=${rest%"$tail"}
        rest=$tail
        out="$out$(printf '\\%03o' $((0x$pair ^ $2)))"
    done
    printf '%s' "$out"
}

# hex HMAC-SHA256 of message $2 with key $1 (RFC 2104: keys longer than the 64-byte block are hashed first).
hmac_sha256() {
    key_hex=$(printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n')
    if [ ${#key_hex} -gt 128 ]; then
        key_hex=$(printf '%s' "$1" | sha256sum | cut -c1-64)
    fi
    while [ ${#key_hex} -lt 128 ]; do key_hex="${key_hex}00"; done
    inner=$({ printf "$(xor_escapes "$key_hex" 54)"; printf '%s' "$2"; } | sha256sum | cut -c1-64)
    { printf "$(xor_escapes "$key_hex" 92)"; printf "$(xor_escapes "$inner" 0)"; } | sha256sum | cut -c1-64
}

# One anchor line: business, number, hash, at, source (the MAC covers them all, in this order).
anchor_line() {
    mac=$(hmac_sha256 "$LEDGER_KEY" "ledger-anchor|v1|$1|$2|$3|$4|$5")
    printf '{"v":1,"business":%s,"number":%s,"hash":"%s","at":"%s","source":"%s","mac":"%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$mac"
}

main() {
    output=$1
    history=${2:-}
    : "${LEDGER_ANCHOR_KEY:?LEDGER_ANCHOR_KEY must be set (the same key as the app containers)}"
    LEDGER_KEY=${LEDGER_ANCHOR_KEY%%,*}   # the first key signs
    at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    # Heads first (one statement, one snapshot), then the file: nothing is written if psql fails.
    heads=$(psql -X -q -A -t -F ' ' -v ON_ERROR_STOP=1 -c "$HEADS_SQL")
    umask 077
    : >"$output"
    if [ -n "$history" ] && [ -f "$history" ]; then
        cat "$history" >>"$output"
        # After a torn last line (a crash while the worker appended), start a fresh line.
        if [ -s "$output" ] && [ "$(tail -c 1 "$output" | od -An -tx1 | tr -d ' \n')" != "0a" ]; then
            printf '\n' >>"$output"
        fi
    fi
    printf '%s\n' "$heads" | while read -r business number hash; do
        [ -n "$business" ] || continue
        anchor_line "$business" "$number" "$hash" "$at" backup
    done >>"$output"
    sync
}

if [ "${LEDGER_ANCHORS_SOURCED:-}" != 1 ]; then
    [ $# -ge 1 ] || { echo "usage: ledger-anchors.sh OUTPUT [HISTORY]" >&2; exit 2; }
    main "$@"
fi
