"""The ledger's rules, enforced by PostgreSQL whatever code or SQL touches the tables.

Error codes (SQLSTATE) raised here, translated to domain errors by accounts.services:
  23L01 unbalanced entry / fewer than two lines        23L02 posted rows are immutable
  23L03 period locked (entry date <= lock date)         23L04 lock date moved backwards
  23L05 invalid account (business, active, leaf)        23L06 numbering / hash chain / books error

The canonical form hashed into the chain (v1) is documented in docs/ledger.md; it is defined once,
by ledger_entry_canon() and ledger_line_canon(), used both by the seal trigger and verify_ledger.
"""

from django.db import migrations

FORWARD = r"""
-- Canonical text of one line: account id, debit and credit at a fixed scale of two decimals (so
-- 1.1 and 1.10 read "1.10"), memo length-prefixed ("5:hello": no separator can be forged).
CREATE FUNCTION ledger_line_canon(p_account_id bigint, p_debit numeric, p_credit numeric, p_memo text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT p_account_id::text || '|' || p_debit::numeric(14, 2)::text || '|' || p_credit::numeric(14, 2)::text
         || '|' || length(p_memo)::text || ':' || p_memo
$$;

-- Canonical text of an entry's header: posted_at as integer microseconds since the Unix epoch,
-- the date as YYYY-MM-DD whatever DateStyle says, free text length-prefixed, '-' for no value.
CREATE FUNCTION ledger_entry_canon(
    p_business_id bigint, p_number bigint, p_entry_date date, p_posted_at timestamptz, p_currency text,
    p_source_type text, p_source_ref text, p_idempotency_key text, p_reverses_id bigint,
    p_created_by_id bigint, p_memo text)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT 'v1|' || p_business_id::text || '|' || p_number::text || '|' || to_char(p_entry_date::timestamp, 'YYYY-MM-DD')
         || '|' || (extract(epoch FROM p_posted_at) * 1000000)::bigint::text || '|' || p_currency
         || '|' || p_source_type || '|' || length(p_source_ref)::text || ':' || p_source_ref
         || '|' || length(p_idempotency_key)::text || ':' || p_idempotency_key
         || '|' || coalesce(p_reverses_id::text, '-') || '|' || coalesce(p_created_by_id::text, '-')
         || '|' || length(p_memo)::text || ':' || p_memo
$$;

-- hash = sha256(previous hash || LF || header || LF || lines joined by LF, in line id order).
CREATE FUNCTION ledger_hash(p_prev text, p_header text, p_lines text)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT encode(sha256(convert_to(p_prev || E'\n' || p_header || E'\n' || coalesce(p_lines, ''), 'UTF8')), 'hex')
$$;

CREATE FUNCTION ledger_genesis_hash() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT repeat('0', 64)
$$;

-- Posting an entry: take the next number from the business's books row (the row lock serialises
-- posting and period close per business), refuse dates on or before the lock date, stamp the
-- posting time. The number is always assigned here, whatever the INSERT said.
CREATE FUNCTION ledger_entry_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_number bigint;
  v_lock date;
BEGIN
  UPDATE accounts_books SET last_number = last_number + 1
   WHERE business_id = NEW.business_id
   RETURNING last_number, lock_date INTO v_number, v_lock;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '23L06',
      MESSAGE = format('business %s has no books row (create its chart first)', NEW.business_id);
  END IF;
  IF v_lock IS NOT NULL AND NEW.entry_date <= v_lock THEN
    RAISE EXCEPTION USING ERRCODE = '23L03',
      MESSAGE = format('the period is closed: entry date %s is on or before the lock date %s of business %s',
                       NEW.entry_date, v_lock, NEW.business_id);
  END IF;
  IF NEW.reverses_id IS NOT NULL AND NOT EXISTS (
      SELECT 1 FROM accounts_journalentry o WHERE o.id = NEW.reverses_id AND o.business_id = NEW.business_id) THEN
    RAISE EXCEPTION USING ERRCODE = '23L05',
      MESSAGE = format('entry %s reverses entry %s of another business', NEW.idempotency_key, NEW.reverses_id);
  END IF;
  NEW.number := v_number;
  NEW.posted_at := now();
  RETURN NEW;
END $$;

CREATE TRIGGER journal_entry_number BEFORE INSERT ON accounts_journalentry
  FOR EACH ROW EXECUTE FUNCTION ledger_entry_before_insert();

-- New lines, once per INSERT statement (set-based, so a bulk load pays once): every line's account
-- is an active leaf account of its entry's business, and lines join only an entry that is not
-- sealed yet (posted in this transaction). Then the daily account totals that reports read are
-- incremented; lines are append-only, so the totals only ever grow.
CREATE FUNCTION ledger_lines_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_sealed boolean;
  v_bad boolean;
  v_row record;
BEGIN
  -- One pass: classify the new lines and add them to the daily totals. If any line is refused,
  -- the exception below undoes the whole statement, totals included.
  WITH src AS MATERIALIZED (
    SELECT l.account_id, e.business_id, e.entry_date, l.debit, l.credit,
           s.entry_id IS NOT NULL AS sealed,
           (a.id IS NULL OR a.business_id <> e.business_id OR NOT a.is_active
            OR EXISTS (SELECT 1 FROM accounts_account c WHERE c.parent_id = l.account_id)) AS bad
      FROM new_lines l
      JOIN accounts_journalentry e ON e.id = l.entry_id
      LEFT JOIN accounts_entryseal s ON s.entry_id = l.entry_id
      LEFT JOIN accounts_account a ON a.id = l.account_id
  ), totals AS (
    INSERT INTO accounts_accountdaytotal AS t (account_id, business_id, day, debit, credit, line_count)
    SELECT account_id, business_id, entry_date, sum(debit), sum(credit), count(*)
      FROM src
     GROUP BY account_id, business_id, entry_date
    ON CONFLICT (account_id, day) DO UPDATE
       SET debit = t.debit + EXCLUDED.debit, credit = t.credit + EXCLUDED.credit,
           line_count = t.line_count + EXCLUDED.line_count
  )
  SELECT coalesce(bool_or(sealed), false), coalesce(bool_or(bad), false) INTO v_sealed, v_bad FROM src;

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

CREATE TRIGGER journal_line_inserted AFTER INSERT ON accounts_journalline
  REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION ledger_lines_inserted();

-- At commit, once per new entry: it has two or more lines and it balances; then it is sealed into
-- its business's hash chain. Deferred events fire in insertion order, which is number order (the
-- books row lock keeps other transactions of the business out until this one ends), so the
-- previous entry is already sealed.
CREATE FUNCTION ledger_entry_seal() RETURNS trigger LANGUAGE plpgsql AS $$
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
  IF NEW.number = 1 THEN
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

CREATE CONSTRAINT TRIGGER journal_entry_seal AFTER INSERT ON accounts_journalentry
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_seal();

-- The balance of one entry, for lines that changed (only possible with the immutability trigger
-- disabled): an entry that still exists must keep two or more lines and balance.
CREATE FUNCTION ledger_check_entry(p_entry_id bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_count bigint;
  v_debit numeric;
  v_credit numeric;
BEGIN
  IF p_entry_id IS NULL OR NOT EXISTS (SELECT 1 FROM accounts_journalentry WHERE id = p_entry_id) THEN
    RETURN;
  END IF;
  SELECT count(*), coalesce(sum(debit), 0), coalesce(sum(credit), 0) INTO v_count, v_debit, v_credit
    FROM accounts_journalline WHERE entry_id = p_entry_id;
  IF v_count < 2 OR v_debit <> v_credit THEN
    RAISE EXCEPTION USING ERRCODE = '23L01',
      MESSAGE = format('journal entry %s does not balance or has fewer than two lines: %s line(s), debits %s, credits %s',
                       p_entry_id, v_count, v_debit, v_credit);
  END IF;
END $$;

-- Checks the old entry and the new entry of every changed line, so moving a line from one entry
-- to another cannot unbalance either without failing the commit.
CREATE FUNCTION ledger_line_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM ledger_check_entry(OLD.entry_id);
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.entry_id IS DISTINCT FROM OLD.entry_id) THEN
    PERFORM ledger_check_entry(NEW.entry_id);
  END IF;
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_line_balanced AFTER UPDATE OR DELETE ON accounts_journalline
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_line_changed();

-- Posted rows never change: entries, lines and seals are never updated or deleted.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = '23L02',
    MESSAGE = format('%s: posted ledger rows cannot be changed (%s refused)', TG_TABLE_NAME, TG_OP),
    HINT = 'Correct a posted entry with a reversal entry.';
END $$;

CREATE TRIGGER journal_entry_immutable BEFORE UPDATE OR DELETE ON accounts_journalentry
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_line_immutable BEFORE UPDATE OR DELETE ON accounts_journalline
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER entry_seal_immutable BEFORE UPDATE OR DELETE ON accounts_entryseal
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- Seals and daily totals are written only by the ledger's triggers (trigger depth > 1). Statement
-- triggers: checked once per statement, not per row.
CREATE FUNCTION ledger_written_by_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF pg_trigger_depth() > 1 THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION USING ERRCODE = '23L02',
    MESSAGE = format('%s is written by the ledger triggers only (%s refused)', TG_TABLE_NAME, TG_OP);
END $$;

CREATE TRIGGER entry_seal_by_trigger BEFORE INSERT ON accounts_entryseal
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_written_by_trigger();
CREATE TRIGGER daytotal_by_trigger BEFORE INSERT OR UPDATE ON accounts_accountdaytotal
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_written_by_trigger();
CREATE TRIGGER daytotal_no_delete BEFORE DELETE ON accounts_accountdaytotal
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- TRUNCATE bypasses row triggers, so it has its own guard: refused while the table holds rows.
CREATE FUNCTION ledger_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_has_rows boolean;
BEGIN
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I)', TG_TABLE_SCHEMA, TG_TABLE_NAME) INTO v_has_rows;
  IF v_has_rows THEN
    RAISE EXCEPTION USING ERRCODE = '23L02',
      MESSAGE = format('%s: posted ledger rows cannot be truncated', TG_TABLE_NAME);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER journal_entry_no_truncate BEFORE TRUNCATE ON accounts_journalentry
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();
CREATE TRIGGER journal_line_no_truncate BEFORE TRUNCATE ON accounts_journalline
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();
CREATE TRIGGER daytotal_no_truncate BEFORE TRUNCATE ON accounts_accountdaytotal
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();
CREATE TRIGGER entry_seal_no_truncate BEFORE TRUNCATE ON accounts_entryseal
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();

-- Books: the lock date only moves forward; the number only moves by one, from the entry trigger.
CREATE FUNCTION ledger_books_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.last_number > 0 THEN
      RAISE EXCEPTION USING ERRCODE = '23L02',
        MESSAGE = format('the books of business %s hold posted entries and cannot be deleted', OLD.business_id);
    END IF;
    RETURN OLD;
  END IF;
  IF TG_OP = 'INSERT' THEN
    IF NEW.last_number <> 0 THEN
      RAISE EXCEPTION USING ERRCODE = '23L06', MESSAGE = 'new books start at number 0';
    END IF;
    RETURN NEW;
  END IF;
  IF NEW.business_id <> OLD.business_id THEN
    RAISE EXCEPTION USING ERRCODE = '23L02', MESSAGE = 'books cannot move to another business';
  END IF;
  IF OLD.lock_date IS NOT NULL AND (NEW.lock_date IS NULL OR NEW.lock_date < OLD.lock_date) THEN
    RAISE EXCEPTION USING ERRCODE = '23L04',
      MESSAGE = format('the lock date of business %s only moves forward (%s to %s refused)',
                       OLD.business_id, OLD.lock_date, coalesce(NEW.lock_date::text, 'none'));
  END IF;
  IF NEW.last_number <> OLD.last_number
     AND NOT (NEW.last_number = OLD.last_number + 1 AND pg_trigger_depth() > 1) THEN
    RAISE EXCEPTION USING ERRCODE = '23L06',
      MESSAGE = format('entry numbers of business %s are assigned by posting only', OLD.business_id);
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER books_guard BEFORE INSERT OR DELETE ON accounts_books
  FOR EACH ROW EXECUTE FUNCTION ledger_books_guard();
-- Posting moves last_number by one from the entry trigger: that common case skips the function.
CREATE TRIGGER books_guard_update BEFORE UPDATE ON accounts_books
  FOR EACH ROW WHEN (NEW.business_id <> OLD.business_id OR NEW.lock_date IS DISTINCT FROM OLD.lock_date
                     OR NEW.last_number <> OLD.last_number + 1 OR pg_trigger_depth() < 1)
  EXECUTE FUNCTION ledger_books_guard();

-- Accounts: a parent is of the same business and type and no cycle forms; once an account has
-- lines its business and type are fixed (reports would silently change otherwise).
CREATE FUNCTION ledger_account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_parent record;
  v_cursor bigint;
  v_depth int := 0;
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.business_id <> OLD.business_id OR NEW.type <> OLD.type)
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

CREATE TRIGGER account_guard BEFORE INSERT OR UPDATE ON accounts_account
  FOR EACH ROW EXECUTE FUNCTION ledger_account_guard();
"""

BACKWARD = r"""
DROP TRIGGER IF EXISTS account_guard ON accounts_account;
DROP TRIGGER IF EXISTS books_guard_update ON accounts_books;
DROP TRIGGER IF EXISTS books_guard ON accounts_books;
DROP TRIGGER IF EXISTS daytotal_no_delete ON accounts_accountdaytotal;
DROP TRIGGER IF EXISTS daytotal_by_trigger ON accounts_accountdaytotal;
DROP TRIGGER IF EXISTS entry_seal_by_trigger ON accounts_entryseal;
DROP TRIGGER IF EXISTS entry_seal_no_truncate ON accounts_entryseal;
DROP TRIGGER IF EXISTS daytotal_no_truncate ON accounts_accountdaytotal;
DROP TRIGGER IF EXISTS journal_line_no_truncate ON accounts_journalline;
DROP TRIGGER IF EXISTS journal_entry_no_truncate ON accounts_journalentry;
DROP TRIGGER IF EXISTS entry_seal_immutable ON accounts_entryseal;
DROP TRIGGER IF EXISTS journal_line_immutable ON accounts_journalline;
DROP TRIGGER IF EXISTS journal_entry_immutable ON accounts_journalentry;
DROP TRIGGER IF EXISTS journal_line_balanced ON accounts_journalline;
DROP TRIGGER IF EXISTS journal_line_inserted ON accounts_journalline;
DROP TRIGGER IF EXISTS journal_entry_seal ON accounts_journalentry;
DROP TRIGGER IF EXISTS journal_entry_number ON accounts_journalentry;
DROP FUNCTION IF EXISTS ledger_account_guard();
DROP FUNCTION IF EXISTS ledger_books_guard();
DROP FUNCTION IF EXISTS ledger_written_by_trigger();
DROP FUNCTION IF EXISTS ledger_refuse_truncate();
DROP FUNCTION IF EXISTS ledger_refuse_change();
DROP FUNCTION IF EXISTS ledger_line_changed();
DROP FUNCTION IF EXISTS ledger_check_entry(bigint);
DROP FUNCTION IF EXISTS ledger_lines_inserted();
DROP FUNCTION IF EXISTS ledger_entry_seal();
DROP FUNCTION IF EXISTS ledger_entry_before_insert();
DROP FUNCTION IF EXISTS ledger_genesis_hash();
DROP FUNCTION IF EXISTS ledger_hash(text, text, text);
DROP FUNCTION IF EXISTS ledger_entry_canon(bigint, bigint, date, timestamptz, text, text, text, text, bigint, bigint, text);
DROP FUNCTION IF EXISTS ledger_line_canon(bigint, numeric, numeric, text);
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
