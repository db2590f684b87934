"""Holes in the ledger's rules found by trying them as an outside attacker would, closed in PostgreSQL.

- An idempotency key reused under ON CONFLICT DO NOTHING (bulk_create(ignore_conflicts=True)) no
  longer consumes an entry number: the entry trigger locks the books row, then looks for the key,
  and only then takes a number.
- accounts_books and accounts_periodclose refuse TRUNCATE; every lock-date move (by the service or
  by raw SQL) writes its PeriodClose row from a trigger; audit rows are append-only.
- "Written by the ledger's own triggers" no longer means pg_trigger_depth() > 1 (a trigger on a
  TEMP table has that depth too): the functions writing seals, daily totals, numbers and audit rows
  are SECURITY DEFINER, owned by the migrating role, and the guards let a write through only when
  current_user owns the table (the definer) and it comes from a trigger.
- An account never moves to another business; the line check locks the accounts it posts to
  (FOR SHARE), so an account change and a posting to it cannot both commit unseen by the other.
- A line for an entry the line check cannot see (not committed yet by another session) is refused.
- Reversals: the original is not itself a reversal, the reversal is not dated before it, and at
  commit its lines mirror the original's (same accounts and amounts, sides swapped, as a multiset).
- Amounts with more than two decimals are refused, not rounded: lines are numeric with a CHECK.
- Lock dates after today (Africa/Nairobi) are refused.

New SQLSTATEs (mapped by accounts.exceptions): 23L07 invalid reversal, 23L08 lock date in the
future; the CHECK constraint line_amount_cents (23514) maps to InvalidLine.

SECURITY DEFINER functions pin search_path to pg_catalog, public, pg_temp: pg_temp last, so a
caller's temporary table cannot stand in for a ledger table. They must stay owned by the owner of
the ledger tables (REASSIGN OWNED moves both).
"""

import importlib
import re

from django.db import migrations

PATH = "SET search_path = pg_catalog, public, pg_temp"
# A write from a trigger (depth > 1) running as the owner of the table written (TG_RELID). Inline in
# the guards (a SQL helper function cost ~50 us a call, four calls a posting).
TRUSTED = (
    "(pg_trigger_depth() > 1 AND EXISTS (SELECT 1 FROM pg_class c"
    " WHERE c.oid = TG_RELID AND pg_get_userbyid(c.relowner) = current_user))"
)

FORWARD = rf"""
-- Posting an entry: lock the business's books row first (it serialises posting and period close per
-- business, so the checks below see every entry committed before), refuse dates on or before the
-- lock date and reversals that break the reversal rules, and only then take the next number - unless
-- the idempotency key is already used: that row is refused by the unique index (or skipped by
-- ON CONFLICT DO NOTHING), so it takes no number (number 0, which no posted entry has).
CREATE OR REPLACE FUNCTION ledger_entry_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PATH} AS $$
DECLARE
  v_number bigint;
  v_lock date;
  v_original record;
BEGIN
  SELECT lock_date INTO v_lock FROM accounts_books WHERE business_id = NEW.business_id FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '23L06',
      MESSAGE = format('business %s has no books row (create its chart first)', NEW.business_id);
  END IF;
  IF v_lock IS NOT NULL AND NEW.entry_date <= v_lock THEN
    RAISE EXCEPTION USING ERRCODE = '23L03',
      MESSAGE = format('the period is closed: entry date %s is on or before the lock date %s of business %s',
                       NEW.entry_date, v_lock, NEW.business_id);
  END IF;
  IF NEW.reverses_id IS NOT NULL THEN
    SELECT o.business_id, o.reverses_id, o.entry_date INTO v_original
      FROM accounts_journalentry o WHERE o.id = NEW.reverses_id;
    IF NOT FOUND OR v_original.business_id <> NEW.business_id THEN
      RAISE EXCEPTION USING ERRCODE = '23L05',
        MESSAGE = format('entry %s reverses entry %s of another business', NEW.idempotency_key, NEW.reverses_id);
    END IF;
    IF v_original.reverses_id IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '23L07',
        MESSAGE = format('entry %s is itself a reversal and cannot be reversed; post the original again instead',
                         NEW.reverses_id);
    END IF;
    IF NEW.entry_date < v_original.entry_date THEN
      RAISE EXCEPTION USING ERRCODE = '23L07',
        MESSAGE = format('a reversal cannot be dated %s, before its original entry %s (%s)',
                         NEW.entry_date, NEW.reverses_id, v_original.entry_date);
    END IF;
  END IF;
  NEW.posted_at := now();
  IF EXISTS (SELECT 1 FROM accounts_journalentry
              WHERE business_id = NEW.business_id AND idempotency_key = NEW.idempotency_key) THEN
    NEW.number := 0;
    RETURN NEW;
  END IF;
  UPDATE accounts_books SET last_number = last_number + 1
   WHERE business_id = NEW.business_id
   RETURNING last_number INTO v_number;
  NEW.number := v_number;
  RETURN NEW;
END $$;

-- New lines, once per INSERT statement: the accounts posted to are locked (FOR SHARE: an account
-- cannot be changed, e.g. deactivated, while a posting to it is in flight, and a posting that waited
-- for such a change reads the account as changed); every line's entry must be visible (a line for
-- another session's uncommitted entry would join it unchecked once that commits); then as before.
CREATE OR REPLACE FUNCTION ledger_lines_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PATH} AS $$
DECLARE
  v_sealed boolean;
  v_bad boolean;
  v_invisible boolean;
  v_row record;
BEGIN
  PERFORM 1 FROM accounts_account a WHERE a.id IN (SELECT l.account_id FROM new_lines l) ORDER BY a.id FOR SHARE;
  -- One pass: classify the new lines and add them to the daily totals. If any line is refused,
  -- the exception below undoes the whole statement, totals included.
  WITH src AS MATERIALIZED (
    SELECT l.account_id, e.business_id, e.entry_date, l.debit, l.credit,
           e.id IS NULL AS invisible,
           s.entry_id IS NOT NULL AS sealed,
           (a.id IS NULL OR a.business_id <> e.business_id OR NOT a.is_active
            OR EXISTS (SELECT 1 FROM accounts_account c WHERE c.parent_id = l.account_id)) AS bad
      FROM new_lines l
      LEFT JOIN accounts_journalentry e ON e.id = l.entry_id
      LEFT JOIN accounts_entryseal s ON s.entry_id = l.entry_id
      LEFT JOIN accounts_account a ON a.id = l.account_id
  ), totals AS (
    INSERT INTO accounts_accountdaytotal AS t (account_id, business_id, day, debit, credit, line_count)
    SELECT account_id, business_id, entry_date, sum(debit), sum(credit), count(*)
      FROM src
     WHERE NOT invisible
     GROUP BY account_id, business_id, entry_date
    ON CONFLICT (account_id, day) DO UPDATE
       SET debit = t.debit + EXCLUDED.debit, credit = t.credit + EXCLUDED.credit,
           line_count = t.line_count + EXCLUDED.line_count
  )
  SELECT coalesce(bool_or(sealed), false), coalesce(bool_or(bad), false), coalesce(bool_or(invisible), false)
    INTO v_sealed, v_bad, v_invisible FROM src;

  IF v_invisible THEN
    SELECT l.entry_id INTO v_row
      FROM new_lines l WHERE NOT EXISTS (SELECT 1 FROM accounts_journalentry e WHERE e.id = l.entry_id) LIMIT 1;
    RAISE EXCEPTION USING ERRCODE = '23L02',
      MESSAGE = format('journal entry %s does not exist or is not committed: lines join only an entry '
                       'posted in the same transaction', v_row.entry_id);
  END IF;
  IF v_sealed THEN
    SELECT l.entry_id INTO v_row
      FROM new_lines l JOIN accounts_entryseal s ON s.entry_id = l.entry_id LIMIT 1;
    RAISE EXCEPTION USING ERRCODE = '23L02',
      MESSAGE = format('journal entry %s is posted: lines cannot be added to it', v_row.entry_id);
  END IF;
  IF v_bad THEN
    SELECT coalesce(a.code, l.account_id::text) AS code, a.id IS NULL AS missing,
           a.business_id <> e.business_id AS foreign_account, a.is_active
      INTO v_row
      FROM new_lines l
      JOIN accounts_journalentry e ON e.id = l.entry_id
      LEFT JOIN accounts_account a ON a.id = l.account_id
     WHERE a.id IS NULL OR a.business_id <> e.business_id OR NOT a.is_active
        OR EXISTS (SELECT 1 FROM accounts_account c WHERE c.parent_id = l.account_id)
     LIMIT 1;
    RAISE EXCEPTION USING ERRCODE = '23L05',
      MESSAGE = format('account %s %s', v_row.code,
                       CASE WHEN v_row.missing THEN 'does not exist'
                            WHEN v_row.foreign_account THEN 'belongs to another business than the entry'
                            WHEN NOT v_row.is_active THEN 'is inactive'
                            ELSE 'is a group account: post to one of its sub-accounts' END);
  END IF;
  RETURN NULL;
END $$;

-- At commit, once per new entry: two or more lines, balanced, a reversal mirroring its original;
-- then sealed into its business's hash chain.
CREATE OR REPLACE FUNCTION ledger_entry_seal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PATH} AS $$
DECLARE
  v_count bigint;
  v_debit numeric;
  v_credit numeric;
  v_lines text;
  v_prev text;
BEGIN
  SELECT count(*), coalesce(sum(debit), 0), coalesce(sum(credit), 0),
         string_agg(ledger_line_canon(account_id, debit, credit, memo), E'\n' ORDER BY id)
    INTO v_count, v_debit, v_credit, v_lines
    FROM accounts_journalline WHERE entry_id = NEW.id;
  IF v_count < 2 THEN
    RAISE EXCEPTION USING ERRCODE = '23L01',
      MESSAGE = format('journal entry %s (business %s, no. %s) has %s line(s); an entry needs at least two',
                       NEW.id, NEW.business_id, NEW.number, v_count);
  END IF;
  IF v_debit <> v_credit THEN
    RAISE EXCEPTION USING ERRCODE = '23L01',
      MESSAGE = format('journal entry %s (business %s, no. %s) does not balance: debits %s, credits %s',
                       NEW.id, NEW.business_id, NEW.number, v_debit, v_credit);
  END IF;
  -- A reversal's lines are its original's with the sides swapped: same multiset of
  -- (account, debit, credit), memos aside.
  -- (Nested IFs: a plain entry pays a simple expression, not a query.)
  IF NEW.reverses_id IS NOT NULL THEN
    IF EXISTS (
        (SELECT account_id, debit, credit FROM accounts_journalline WHERE entry_id = NEW.id
         EXCEPT ALL
         SELECT account_id, credit, debit FROM accounts_journalline WHERE entry_id = NEW.reverses_id)
        UNION ALL
        (SELECT account_id, credit, debit FROM accounts_journalline WHERE entry_id = NEW.reverses_id
         EXCEPT ALL
         SELECT account_id, debit, credit FROM accounts_journalline WHERE entry_id = NEW.id)) THEN
      RAISE EXCEPTION USING ERRCODE = '23L07',
        MESSAGE = format('journal entry %s (business %s, no. %s) reverses entry %s but its lines are not that '
                         'entry''s lines with debits and credits swapped', NEW.id, NEW.business_id, NEW.number,
                         NEW.reverses_id);
    END IF;
  END IF;
  IF NEW.number < 1 THEN
    RAISE EXCEPTION USING ERRCODE = '23L06',
      MESSAGE = format('journal entry %s of business %s has no number', NEW.id, NEW.business_id);
  ELSIF NEW.number = 1 THEN
    v_prev := ledger_genesis_hash();
  ELSE
    SELECT s.hash INTO v_prev
      FROM accounts_journalentry p JOIN accounts_entryseal s ON s.entry_id = p.id
     WHERE p.business_id = NEW.business_id AND p.number = NEW.number - 1;
    IF v_prev IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = '23L06',
        MESSAGE = format('hash chain of business %s: entry no. %s is not sealed before no. %s',
                         NEW.business_id, NEW.number - 1, NEW.number);
    END IF;
  END IF;
  INSERT INTO accounts_entryseal (entry_id, hash)
  VALUES (NEW.id, ledger_hash(v_prev,
                  ledger_entry_canon(NEW.business_id, NEW.number, NEW.entry_date, NEW.posted_at, NEW.currency,
                                     NEW.source_type, NEW.source_ref, NEW.idempotency_key, NEW.reverses_id,
                                     NEW.created_by_id, NEW.memo),
                  v_lines));
  RETURN NULL;
END $$;

-- Seals, daily totals and period-close rows: written only by the ledger's trigger functions, i.e.
-- from a trigger running as the table's owner (the SECURITY DEFINER functions above): a direct
-- write, or one from a trigger on someone's TEMP table, runs as the caller.
CREATE OR REPLACE FUNCTION ledger_written_by_trigger() RETURNS trigger
LANGUAGE plpgsql {PATH} AS $$
BEGIN
  IF {TRUSTED} THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION USING ERRCODE = '23L02',
    MESSAGE = format('%s is written by the ledger triggers only (%s refused)', TG_TABLE_NAME, TG_OP);
END $$;

-- Books: the lock date only moves forward and never past today (Africa/Nairobi); the number only
-- moves by one, from the entry trigger; books with a lock date or entries are never deleted.
CREATE OR REPLACE FUNCTION ledger_books_guard() RETURNS trigger
LANGUAGE plpgsql {PATH} AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.last_number > 0 OR OLD.lock_date IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '23L02',
        MESSAGE = format('the books of business %s hold posted entries or a lock date and cannot be deleted',
                         OLD.business_id);
    END IF;
    RETURN OLD;
  END IF;
  IF TG_OP = 'UPDATE' THEN
    IF NEW.business_id <> OLD.business_id THEN
      RAISE EXCEPTION USING ERRCODE = '23L02', MESSAGE = 'books cannot move to another business';
    END IF;
    IF OLD.lock_date IS NOT NULL AND (NEW.lock_date IS NULL OR NEW.lock_date < OLD.lock_date) THEN
      RAISE EXCEPTION USING ERRCODE = '23L04',
        MESSAGE = format('the lock date of business %s only moves forward (%s to %s refused)',
                         OLD.business_id, OLD.lock_date, coalesce(NEW.lock_date::text, 'none'));
    END IF;
    IF NEW.last_number <> OLD.last_number
       AND NOT (NEW.last_number = OLD.last_number + 1 AND {TRUSTED}) THEN
      RAISE EXCEPTION USING ERRCODE = '23L06',
        MESSAGE = format('entry numbers of business %s are assigned by posting only', OLD.business_id);
    END IF;
  ELSIF NEW.last_number <> 0 THEN
    RAISE EXCEPTION USING ERRCODE = '23L06', MESSAGE = 'new books start at number 0';
  END IF;
  IF NEW.lock_date > (pg_catalog.now() AT TIME ZONE 'Africa/Nairobi')::date
     AND (TG_OP = 'INSERT' OR NEW.lock_date IS DISTINCT FROM OLD.lock_date) THEN
    RAISE EXCEPTION USING ERRCODE = '23L08',
      MESSAGE = format('lock date %s of business %s is in the future: only past days and today can be closed',
                       NEW.lock_date, NEW.business_id);
  END IF;
  RETURN NEW;
END $$;

-- Every update of a books row runs the guard: the old fast path skipped it for "+1 from a trigger",
-- which a trigger on a TEMP table also is.
DROP TRIGGER books_guard_update ON accounts_books;
CREATE TRIGGER books_guard_update BEFORE UPDATE ON accounts_books
  FOR EACH ROW EXECUTE FUNCTION ledger_books_guard();

-- The audit row of every lock-date move, whoever moves it: closed_by from the transaction-local
-- setting ledger.acting_user_id (books_close_period sets it), NULL for raw SQL.
CREATE FUNCTION ledger_books_lock_date_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PATH} AS $$
BEGIN
  INSERT INTO accounts_periodclose (books_id, previous_lock_date, lock_date, closed_by_id, closed_at)
  VALUES (NEW.business_id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.lock_date END, NEW.lock_date,
          nullif(current_setting('ledger.acting_user_id', true), '')::integer, now());
  RETURN NULL;
END $$;

CREATE TRIGGER books_lock_date_inserted AFTER INSERT ON accounts_books
  FOR EACH ROW WHEN (NEW.lock_date IS NOT NULL) EXECUTE FUNCTION ledger_books_lock_date_moved();
CREATE TRIGGER books_lock_date_moved AFTER UPDATE ON accounts_books
  FOR EACH ROW WHEN (NEW.lock_date IS DISTINCT FROM OLD.lock_date) EXECUTE FUNCTION ledger_books_lock_date_moved();

-- Audit rows: written by that trigger only, never changed, never truncated; nor are the books.
CREATE TRIGGER periodclose_by_trigger BEFORE INSERT ON accounts_periodclose
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_written_by_trigger();
CREATE TRIGGER periodclose_immutable BEFORE UPDATE OR DELETE ON accounts_periodclose
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER periodclose_no_truncate BEFORE TRUNCATE ON accounts_periodclose
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();
CREATE TRIGGER books_no_truncate BEFORE TRUNCATE ON accounts_books
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();

-- Accounts: a parent of the same business and type, no cycle; an account never changes business
-- (a posting in flight could not see the move, nor the move the posting); its type is fixed once
-- it has lines.
CREATE OR REPLACE FUNCTION ledger_account_guard() RETURNS trigger
LANGUAGE plpgsql {PATH} AS $$
DECLARE
  v_parent record;
  v_cursor bigint;
  v_depth int := 0;
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.business_id <> OLD.business_id THEN
    RAISE EXCEPTION USING ERRCODE = '23L05',
      MESSAGE = format('account %s cannot move to another business', OLD.code);
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.type <> OLD.type
     AND EXISTS (SELECT 1 FROM accounts_journalline WHERE account_id = OLD.id) THEN
    RAISE EXCEPTION USING ERRCODE = '23L05',
      MESSAGE = format('account %s has postings: its business and type cannot change', OLD.code);
  END IF;
  IF NEW.parent_id IS NOT NULL THEN
    SELECT business_id, type INTO v_parent FROM accounts_account WHERE id = NEW.parent_id;
    IF v_parent.business_id <> NEW.business_id OR v_parent.type <> NEW.type THEN
      RAISE EXCEPTION USING ERRCODE = '23L05',
        MESSAGE = format('account %s: the parent account must be of the same business and type', NEW.code);
    END IF;
    v_cursor := NEW.parent_id;
    WHILE v_cursor IS NOT NULL LOOP
      IF v_cursor = NEW.id OR v_depth > 20 THEN
        RAISE EXCEPTION USING ERRCODE = '23L05',
          MESSAGE = format('account %s: the parent chain would form a cycle', NEW.code);
      END IF;
      SELECT parent_id INTO v_cursor FROM accounts_account WHERE id = v_cursor;
      v_depth := v_depth + 1;
    END LOOP;
  END IF;
  RETURN NEW;
END $$;

-- The other ledger functions that read tables: a caller's TEMP table cannot stand in for them.
ALTER FUNCTION ledger_check_entry(bigint) {PATH};
ALTER FUNCTION ledger_refuse_truncate() {PATH};

-- Amounts: exact cents, refused (not rounded) otherwise. numeric(14,2) rounded on input before any
-- check could see the value; unconstrained numeric keeps it (no table rewrite: only the typmod goes)
-- and the CHECK refuses more than two decimals, NaN and Infinity (both fail "< 10^12").
ALTER TABLE accounts_journalline ALTER COLUMN debit TYPE numeric, ALTER COLUMN credit TYPE numeric;
ALTER TABLE accounts_journalline ADD CONSTRAINT line_amount_cents
  CHECK (scale(debit) <= 2 AND scale(credit) <= 2 AND debit < 1000000000000 AND credit < 1000000000000);

-- The guards trust a write made as the owner of the table written: the SECURITY DEFINER functions
-- must be owned by the owner of the tables they write (the migrating role normally is both; if a
-- superuser migrates a database whose tables belong to another role, hand the functions over).
DO $$
DECLARE
  v_owners name[];
  v_function text;
BEGIN
  SELECT array_agg(DISTINCT pg_get_userbyid(relowner)) INTO v_owners FROM pg_class
   WHERE oid IN ('accounts_entryseal'::regclass, 'accounts_accountdaytotal'::regclass,
                 'accounts_books'::regclass, 'accounts_periodclose'::regclass);
  IF array_length(v_owners, 1) <> 1 THEN
    RAISE EXCEPTION 'the ledger tables have several owners (%): give them one owner first', v_owners;
  END IF;
  FOREACH v_function IN ARRAY ARRAY['ledger_entry_before_insert()', 'ledger_lines_inserted()',
                                    'ledger_entry_seal()', 'ledger_books_lock_date_moved()'] LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', v_function, v_owners[1]);
  END LOOP;
END $$;
"""


def _original_functions(*names: str) -> str:
    """The definitions of `names` as migration 0002 created them, as CREATE OR REPLACE statements."""
    source = importlib.import_module("accounts.migrations.0002_ledger_rules").FORWARD
    found = {
        match.group(1): match.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        for match in re.finditer(r"CREATE FUNCTION (\w+)\(.*?\$\$.*?\$\$;", source, re.DOTALL)
    }
    return "\n".join(found[name] for name in names)


BACKWARD = (
    """
ALTER TABLE accounts_journalline DROP CONSTRAINT IF EXISTS line_amount_cents;
ALTER TABLE accounts_journalline ALTER COLUMN debit TYPE numeric(14, 2), ALTER COLUMN credit TYPE numeric(14, 2);
ALTER FUNCTION ledger_check_entry(bigint) RESET search_path;
ALTER FUNCTION ledger_refuse_truncate() RESET search_path;
DROP TRIGGER IF EXISTS books_no_truncate ON accounts_books;
DROP TRIGGER IF EXISTS periodclose_no_truncate ON accounts_periodclose;
DROP TRIGGER IF EXISTS periodclose_immutable ON accounts_periodclose;
DROP TRIGGER IF EXISTS periodclose_by_trigger ON accounts_periodclose;
DROP TRIGGER IF EXISTS books_lock_date_moved ON accounts_books;
DROP TRIGGER IF EXISTS books_lock_date_inserted ON accounts_books;
DROP FUNCTION IF EXISTS ledger_books_lock_date_moved();
DROP TRIGGER IF EXISTS books_guard_update ON accounts_books;
"""
    + _original_functions(
        "ledger_entry_before_insert",
        "ledger_lines_inserted",
        "ledger_entry_seal",
        "ledger_written_by_trigger",
        "ledger_books_guard",
        "ledger_account_guard",
    )
    + """
CREATE TRIGGER books_guard_update BEFORE UPDATE ON accounts_books
  FOR EACH ROW WHEN (NEW.business_id <> OLD.business_id OR NEW.lock_date IS DISTINCT FROM OLD.lock_date
                     OR NEW.last_number <> OLD.last_number + 1 OR pg_trigger_depth() < 1)
  EXECUTE FUNCTION ledger_books_guard();
"""
)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_line_entry_index")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
