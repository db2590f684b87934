#!/bin/sh
# Daily PostgreSQL backups for the `backup` service of docker-compose.prod.yml (postgres:16-alpine image).
#
# Once a day at BACKUP_HOUR_UTC (and at start if the last good dump is more than a day old) it runs
# pg_dump -Fc into BACKUP_DIR as <db>-<UTC timestamp>.dump, checks the archive is readable
# (pg_restore --list), then deletes dumps older than BACKUP_KEEP_DAYS days. Pruning happens only after
# a good dump, so failing dumps never delete the last good ones. BACKUP_DIR/.last-success holds the
# epoch seconds of the last good dump; the container healthcheck reads it.
#
# Ledger anchors: just before each dump, deploy/ledger-anchors.sh writes <db>-<UTC timestamp>.anchors.jsonl
# beside it - the hourly anchors so far (LEDGER_ANCHORS_HISTORY, the ledger_anchors volume, read-only) and
# a signed anchor of every business's current chain head. Every head in it is in the dump, so after a
# restore `verify_ledger --anchors` that file checks the restored chains (docs/ledger.md). Copy both off
# the server. A failure there is logged and the dump goes ahead: the dump matters more.
#
# Every step checks its own result (set -e does not apply inside a function called as a condition).
# Connection: the standard libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
# Restore: docs/deploy.md ("Backups and restore").
set -eu

BACKUP_DIR=${BACKUP_DIR:-/backups}
BACKUP_KEEP_DAYS=${BACKUP_KEEP_DAYS:-14}
BACKUP_HOUR_UTC=${BACKUP_HOUR_UTC:-23}   # 23:00 UTC = 02:00 in Nairobi
LEDGER_ANCHORS_SCRIPT=${LEDGER_ANCHORS_SCRIPT:-/usr/local/bin/ledger-anchors.sh}
LEDGER_ANCHORS_HISTORY=${LEDGER_ANCHORS_HISTORY:-/ledger-anchors/anchors.jsonl}
: "${PGDATABASE:?PGDATABASE must be set}"

case $BACKUP_KEEP_DAYS in '' | *[!0-9]*) echo "backup: BACKUP_KEEP_DAYS must be a whole number of days" >&2; exit 2 ;; esac
case $BACKUP_HOUR_UTC in '' | *[!0-9]*) echo "backup: BACKUP_HOUR_UTC must be 0-23" >&2; exit 2 ;; esac
# No leading zeros ("08" would be read as octal by the shell's arithmetic).
BACKUP_KEEP_DAYS=$(echo "$BACKUP_KEEP_DAYS" | sed 's/^0*\([0-9]\)/\1/')
BACKUP_HOUR_UTC=$(echo "$BACKUP_HOUR_UTC" | sed 's/^0*\([0-9]\)/\1/')
if [ "$BACKUP_KEEP_DAYS" -lt 1 ] || [ "$BACKUP_HOUR_UTC" -gt 23 ]; then
    echo "backup: need BACKUP_KEEP_DAYS >= 1 and BACKUP_HOUR_UTC in 0-23" >&2
    exit 2
fi

umask 077   # dumps hold every customer and every shilling: readable by root only
mkdir -p "$BACKUP_DIR"

log() { echo "backup: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }

last_success() {
    cat "$BACKUP_DIR/.last-success" 2>/dev/null || echo 0
}

backup_once() {
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    final="$BACKUP_DIR/$PGDATABASE-$stamp.dump"
    partial="$BACKUP_DIR/.$PGDATABASE-$stamp.dump.partial"   # hidden until complete and checked
    anchors="$BACKUP_DIR/$PGDATABASE-$stamp.anchors.jsonl"
    anchors_partial="$BACKUP_DIR/.$PGDATABASE-$stamp.anchors.jsonl.partial"
    # Before the dump: the anchored heads are then all in it.
    if ! sh "$LEDGER_ANCHORS_SCRIPT" "$anchors_partial" "$LEDGER_ANCHORS_HISTORY"; then
        rm -f "$anchors_partial"
        log "WARNING: could not write the ledger anchors; dumping without them"
    fi
    log "dumping $PGDATABASE to $final"
    if ! pg_dump --format=custom --file="$partial" "$PGDATABASE"; then
        rm -f "$partial" "$anchors_partial"
        log "FAILED: pg_dump exited non-zero; keeping the existing dumps"
        return 1
    fi
    if ! pg_restore --list "$partial" >/dev/null; then
        rm -f "$partial" "$anchors_partial"
        log "FAILED: the new dump is not a readable archive; keeping the existing dumps"
        return 1
    fi
    mv "$partial" "$final" || return 1
    if [ -f "$anchors_partial" ]; then
        mv "$anchors_partial" "$anchors" && log "ok: $anchors"
    fi
    date +%s >"$BACKUP_DIR/.last-success" || return 1
    log "ok: $final ($(du -k "$final" | cut -f1) KiB)"

    # Older than BACKUP_KEEP_DAYS days: -mtime +N matches files at least N+1 whole days old.
    find "$BACKUP_DIR" -maxdepth 1 -type f \( -name "$PGDATABASE-*.dump" -o -name "$PGDATABASE-*.anchors.jsonl" \) \
        -mtime +"$((BACKUP_KEEP_DAYS - 1))" -print -exec rm -f {} \; | sed 's/^/backup: pruned /'
    # Leftovers of a dump interrupted by a restart (a day old or more).
    find "$BACKUP_DIR" -maxdepth 1 -type f -name ".*.partial" -mtime +0 -exec rm -f {} \;
    return 0
}

seconds_until_next_run() {
    now=$(date -u +%s)
    delay=$(((BACKUP_HOUR_UTC * 3600 - now % 86400 + 86400) % 86400))
    if [ "$delay" -eq 0 ]; then delay=86400; fi
    echo "$delay"
}

log "keeping $BACKUP_KEEP_DAYS days of dumps in $BACKUP_DIR; daily at $BACKUP_HOUR_UTC:00 UTC"

# Stop promptly on `docker compose stop`: sleep runs in the background and the shell waits for it,
# so SIGTERM is handled at once instead of after the sleep ends.
sleeper=
trap 'log "stopping"; [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null; exit 0' TERM INT

pause() {
    sleep "$1" &
    sleeper=$!
    wait "$sleeper"
}

# A failed dump is retried every hour until one succeeds (rather than a day later).
backup_until_ok() {
    until backup_once; do
        log "retrying in 3600 s"
        pause 3600
    done
}

# A fresh install (or one whose last good dump is over a day old) gets a dump right away.
if [ $(($(date +%s) - $(last_success))) -ge 86400 ]; then
    backup_until_ok
fi

while :; do
    delay=$(seconds_until_next_run)
    log "next dump in $delay s"
    pause "$delay"
    backup_until_ok
done
