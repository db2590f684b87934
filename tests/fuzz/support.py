"""What the fuzz tests share: Hypothesis settings, awkward values, and row counts of every table.

Each test runs a bounded number of examples (a few seconds in `make test`); FUZZ_EXAMPLES=<n>
raises every test to n examples for a long run:

    FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/fuzz -p no:cacheprovider

Examples are random on each run; a failure prints the minimal example and a blob to replay it
(@reproduce_failure). Nothing is written to a .hypothesis/ database.
"""

from __future__ import annotations

import os
from typing import Any

from django.apps import apps
from django.db import connection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz(examples: int) -> Any:
    """Hypothesis settings for a fuzz test of `examples` examples (FUZZ_EXAMPLES overrides)."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples)),
        deadline=None,
        database=None,
        print_blob=True,
        # The examples share the test's database (row counts are compared per example).
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def row_counts() -> dict[str, int]:
    """The number of rows of every table of the project's models, in one query."""
    tables = sorted(
        {
            model._meta.db_table
            for model in apps.get_models()
            if model._meta.managed and not model._meta.proxy and model._meta.db_table != "django_session"
        }
    )
    sql = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{table}")' for table in tables)
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return dict(zip(tables, cursor.fetchone(), strict=True))


def changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Tables whose row count moved, and by how much."""
    return {table: after[table] - before[table] for table in before if after[table] != before[table]}


# Text a person or a broken system might send: NULs, control characters, right-to-left marks,
# surrogates' neighbours, very long runs.
awkward_text = (
    st.text(max_size=40)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from(["", " ", "\x00", "a\x00b", "\u202e", "\ufeff", "'; DROP TABLE x; --", "<script>", "0" * 300])
    | st.builds(lambda c, n: c * n, st.sampled_from(["x", "9", "\u00e9"]), st.integers(200, 5000))
)

# Numbers as text, the way a spreadsheet or a hand-made file writes them, good and bad.
number_text = (
    st.from_regex(r"-?[0-9]{1,16}(\.[0-9]{0,4})?", fullmatch=True)
    | st.decimals(allow_nan=True, allow_infinity=True, places=None).map(str)
    | st.floats().map(str)
    | st.integers().map(str)
    | st.sampled_from(
        ["", "NaN", "nan", "-Infinity", "inf", "1e30", "1E-30", "1,000.50", "KES 5", "0", "-0", "0.005", "1e999999"]
    )
)

date_text = (
    st.dates().map(str)
    | st.dates().map(lambda d: d.strftime("%d/%m/%Y"))
    | st.datetimes().map(lambda d: d.strftime("%d-%m-%Y %H:%M:%S"))
    | st.sampled_from(["", "2026-02-30", "31-12-9999 23:59:59", "01-01-0001 00:00:00", "yesterday", "0000-00-00"])
)

bool_text = st.sampled_from(["", "1", "0", "TRUE", "false", "yes", "no", "x", "2", "None"])
