"""psycopg's prepared-statement bookkeeping holds only statements it can prepare (backoffice/db.py)."""

from __future__ import annotations

from django.db import connection

from operations.services.postings import cursor_prepared
from tenancy.models import Business

SERVER_BOUND_SQL = "SELECT %s::int + 0 AS backoffice_db_prepared_test"


def _prepared_here() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%backoffice_db_prepared_test%"],
        )
        return int(cursor.fetchone()[0])


def _orm_statements(count: int) -> None:
    """`count` ORM statements, each of another text (as a group's IN lists and bulk INSERTs are)."""
    for n in range(1, count + 1):
        list(Business.objects.filter(pk__in=range(n)).values_list("pk", flat=True))


def test_client_bound_statements_are_not_kept_by_the_connection(db: None) -> None:
    """Each ORM statement's text (values written in) was kept in psycopg's LRU of prepared_max (100)
    entries on every connection: ~0.4 MB per payments worker connection. Now none is."""
    connection.ensure_connection()
    manager = connection.connection._prepared
    _orm_statements(150)
    kept = list(manager._counts) + list(manager._names)
    assert not [key for key in kept if b"tenancy_business" in key[0]]
    assert len(kept) <= 2  # the test's own server-side statements, if any


def test_server_bound_statement_is_prepared_among_many_orm_statements(db: None) -> None:
    """A statement of cursor_prepared() is prepared at its prepare_threshold-th run (5) even when
    more than prepared_max (100) ORM statements run between two of its runs: the ORM statements
    used to push its count out of psycopg's LRU, and it was never prepared."""
    connection.ensure_connection()
    threshold = connection.connection.prepare_threshold
    assert threshold is not None
    for n in range(threshold + 1):
        with cursor_prepared() as cursor:
            cursor.execute(SERVER_BOUND_SQL, [n])
            assert cursor.fetchone()[0] == n
        _orm_statements(120)
    assert _prepared_here() == 1


def test_a_rollback_through_django_still_clears_prepared_statements(db: None) -> None:
    """psycopg forgets (DEALLOCATE ALL) its prepared statements after a ROLLBACK it sees, also one sent
    through Django's client-bound cursor; that is kept."""
    connection.ensure_connection()
    for n in range(connection.connection.prepare_threshold + 1):
        with cursor_prepared() as cursor:
            cursor.execute(SERVER_BOUND_SQL, [n])
    assert _prepared_here() == 1
    with connection.cursor() as cursor:
        cursor.execute("SAVEPOINT backoffice_db_test")
        cursor.execute("ROLLBACK TO SAVEPOINT backoffice_db_test")
    assert _prepared_here() == 0
