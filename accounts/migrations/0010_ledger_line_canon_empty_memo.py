"""ledger_line_canon writes an empty memo's "|0:" as one constant: the same text, built with fewer steps.

A line's canonical text (v1, docs/ledger.md) ends in "|" T(memo), T(s) = length ":" s. For the empty
memo - most lines - that is "|0:", which the v1 body built with three concatenations and a length;
the CASE returns the constant instead. The text is the same for every input: '' gives "|0:" either
way, any other memo takes the v1 expression unchanged, and a NULL memo (NULL = '' is NULL, so the
ELSE branch) still makes the whole text NULL. So every seal made before stays valid (nothing is
re-sealed), and the seal trigger and verify_ledger keep sharing the one definition. The function
stays IMMUTABLE and a single expression, so PostgreSQL still inlines it. Measured in
docs/ledger.md ("Where verify_ledger's time goes").
"""

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION ledger_line_canon(p_account_id bigint, p_debit numeric, p_credit numeric, p_memo text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT p_account_id::text || '|' || p_debit::numeric(14, 2)::text || '|' || p_credit::numeric(14, 2)::text
         || CASE WHEN p_memo = '' THEN '|0:' ELSE '|' || length(p_memo)::text || ':' || p_memo END
$$;
"""

BACKWARD = r"""
CREATE OR REPLACE FUNCTION ledger_line_canon(p_account_id bigint, p_debit numeric, p_credit numeric, p_memo text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT p_account_id::text || '|' || p_debit::numeric(14, 2)::text || '|' || p_credit::numeric(14, 2)::text
         || '|' || length(p_memo)::text || ':' || p_memo
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0009_ledger_trigger_checked_keys")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
