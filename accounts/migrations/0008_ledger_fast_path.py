"""The ledger's triggers, the same checks with index lookups only, and no number for a skipped row.

What a posting costs PostgreSQL, and where, is in docs/ledger.md ("Where a posting's time goes").

- The line trigger reads the accounts by primary key (seq scans off for its statements): its plans,
  made once per session, read the whole accounts table for every line when the planner found the
  table small - three scans of it per posting of three lines, a third of the trigger's time in the
  benchmark, and more as businesses are added until a session plans again.
- The entry trigger checks the idempotency key in the statement that takes the number, and gives
  number 0 - no number - also to a row whose id or, for a reversal, whose original entry is taken:
  such a row is refused by a unique index or skipped by ON CONFLICT DO NOTHING, and before it took
  a number for nothing, leaving a gap that stopped every later posting of the business at commit
  (the chain needs the entry numbered one less). entry_post relies on it: inside a caller's
  transaction it posts with ON CONFLICT DO NOTHING (accounts/services.py).

The seal and the canonical form are unchanged (ledger_entry_canon, ledger_line_canon, ledger_hash).
"""

import importlib
import re

from django.db import migrations

PATH = "SET search_path = pg_catalog, public, pg_temp"

FORWARD = rf"""
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
  -- The next number, unless a unique index will refuse the row (or ON CONFLICT DO NOTHING skip it):
  -- its idempotency key, its id or the entry it reverses is taken. This statement runs after the
  -- lock above, so it sees every entry of the business committed before.
  UPDATE accounts_books SET last_number = last_number + 1
   WHERE business_id = NEW.business_id
     AND NOT EXISTS (SELECT 1 FROM accounts_journalentry
                      WHERE business_id = NEW.business_id AND idempotency_key = NEW.idempotency_key)
     AND NOT EXISTS (SELECT 1 FROM accounts_journalentry WHERE id = NEW.id)
     AND (NEW.reverses_id IS NULL
          OR NOT EXISTS (SELECT 1 FROM accounts_journalentry WHERE reverses_id = NEW.reverses_id))
  RETURNING last_number INTO v_number;
  NEW.number := coalesce(v_number, 0);
  RETURN NEW;
END $$;

-- Every lookup here is by key (an account, an entry, a seal, a daily total). The plans are made once
-- per session, when the accounts table may be small enough for the planner to prefer reading it
-- whole - for every line of every posting (three scans of the accounts per posting of three lines);
-- seq scans off, they use the indexes whatever the statistics say.
CREATE OR REPLACE FUNCTION ledger_lines_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET enable_seqscan = off {PATH} AS $$
DECLARE
  v_sealed boolean;
  v_bad boolean;
  v_invisible boolean;
  v_row record;
BEGIN
  PERFORM 1 FROM accounts_account a
   WHERE a.id = ANY (ARRAY(SELECT DISTINCT l.account_id FROM new_lines l))
   ORDER BY a.id FOR SHARE;
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
"""


def _previous_functions(*names: str) -> str:
    """The definitions of `names` as migration 0004 left them (CREATE OR REPLACE statements)."""
    source = importlib.import_module("accounts.migrations.0004_ledger_holes").FORWARD
    found = {
        match.group(1): match.group(0)
        for match in re.finditer(r"CREATE OR REPLACE FUNCTION (\w+)\(.*?\$\$.*?\$\$;", source, re.DOTALL)
    }
    return "\n".join(found[name] for name in names)


BACKWARD = _previous_functions("ledger_entry_before_insert", "ledger_lines_inserted")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_account_intercompany")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
