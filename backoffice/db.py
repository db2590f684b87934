"""psycopg's prepared-statement bookkeeping kept to the statements that can be prepared.

With `prepare_threshold` set (settings.py: the ledger's posting statement is prepared once per
connection), psycopg counts every statement a connection runs in an LRU of `prepared_max` (100)
entries, keyed by the statement's text, to prepare it once it has run `prepare_threshold` times.
Django's own cursors bind parameters client-side (psycopg's ClientCursor): they are never prepared,
but psycopg counts them all the same, and the text it keys them by is the statement with its values
written in - a different text every time, never run twice. Each connection therefore held the last
100 ORM statements it ran, values and all: a group of 100 M-Pesa callbacks leaves 14 of them,
~47 KB (the Payment rows' INSERT alone ~17.6 KB), and a connection of the payments worker held
~0.4 MB of them until it was replaced (DB_CONN_MAX_AGE), sized by the largest groups - which follow
the backlog, so the load. They also pushed out the counts of the statements that can be prepared
(operations/services/postings.py's cursor_prepared), which then had to reach the threshold within
the last 100 statements of any kind. docs/worker-memory.md ("Soak") has the measurements.

`prepared_cache_server_bound_only` (a `connection_created` receiver, backoffice/apps.py) gives each
new connection a PrepareManager that leaves client-bound statements out of that bookkeeping. It still
reads their results, so a ROLLBACK, DROP, ALTER or DISCARD ALL sent through Django's cursors clears
the cache as psycopg does. tests/backoffice/test_db_prepared.py pins the psycopg internals this uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import pq
from psycopg._preparing import Key, Prepare, PrepareManager
from psycopg._queries import PostgresClientQuery, PostgresQuery

# The key under which a client-bound statement goes through psycopg's validate(): never stored.
_CLIENT_BOUND: Key = (b"", ())


class ServerBoundPrepareManager(PrepareManager):
    """psycopg's PrepareManager, counting only the statements bound server-side (the only ones it can
    prepare)."""

    def maybe_add_to_cache(self, query: PostgresQuery, prep: Prepare, name: bytes) -> Key | None:
        if isinstance(query, PostgresClientQuery):
            return _CLIENT_BOUND if self.prepare_threshold is not None else None
        return super().maybe_add_to_cache(query, prep, name)

    def validate(self, key: Key, prep: Prepare, name: bytes, results: Sequence[pq.abc.PGresult]) -> None:
        if key is _CLIENT_BOUND:
            self._should_discard(prep, results)  # a ROLLBACK, DROP... still clears the cache
            return
        super().validate(key, prep, name, results)


def prepared_cache_server_bound_only(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created: a fresh PostgreSQL connection's PrepareManager replaced by a
    ServerBoundPrepareManager with the same settings (nothing is cached yet)."""
    if connection.vendor != "postgresql":
        return
    raw = connection.connection
    current = getattr(raw, "_prepared", None)
    if current is None or isinstance(current, ServerBoundPrepareManager):
        return
    manager = ServerBoundPrepareManager()
    manager.prepare_threshold = current.prepare_threshold
    manager.prepared_max = current.prepared_max
    raw._prepared = manager
