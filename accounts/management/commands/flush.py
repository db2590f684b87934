"""`flush`, able to empty a database that holds a ledger (development and the test suite only).

The ledger's tables refuse TRUNCATE while they hold posted rows (migrations/0002_ledger_rules.py), and
the application role may not TRUNCATE anything (docs/deploy.md, "Database roles"). Django's `flush` -
run by `manage.py flush` and by pytest-django after every transactional test - truncates every table, so
here it runs on a connection that may switch the ledger's triggers off for the length of the flush:

- the owner role's, when DATABASE_OWNER_URL is set (`make run`'s .env and the test suite; production's
  app containers never have it): the ledger's triggers are disabled inside the flush's transaction, so a
  failure or a crash leaves them on;
- a superuser's (the connection itself): `session_replication_role = replica` for the flush.

Anyone else - the application role alone, as in production - cannot empty the ledger, as it should be.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dj_database_url
from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.flush import Command as FlushCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from accounts.db_roles import LEDGER_TABLES


@contextmanager
def owner_connection(alias: str) -> Iterator[BaseDatabaseWrapper]:
    """connections[alias], connected as DATABASE_OWNER_URL's role (same database) while in the block."""
    current = connections[alias]
    url = settings.DATABASE_OWNER_URL
    owner = dj_database_url.parse(url) if url else None
    if owner is None or owner["USER"] == current.settings_dict["USER"]:
        yield current
        return
    params = {**current.settings_dict, "USER": owner["USER"], "PASSWORD": owner["PASSWORD"], "CONN_MAX_AGE": 0}
    wrapper = current.__class__(params, alias)
    connections[alias] = wrapper
    try:
        yield wrapper
    finally:
        wrapper.close()
        connections[alias] = current


class Command(FlushCommand):
    help = FlushCommand.help + " Empties the ledger too as the owner role (DATABASE_OWNER_URL) or a superuser."

    def handle(self, **options: Any) -> None:
        alias = options.get("database") or DEFAULT_DB_ALIAS
        with owner_connection(alias) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user, current_setting('is_superuser') = 'on'")
                user, superuser = cursor.fetchone()
            if superuser:
                with connection.cursor() as cursor:
                    cursor.execute("SET session_replication_role = replica")
                try:
                    super().handle(**options)
                finally:
                    with connection.cursor() as cursor:
                        cursor.execute("SET session_replication_role = DEFAULT")
                return
            with transaction.atomic(using=alias):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SET LOCAL lock_timeout = '60s'")
                        for table in LEDGER_TABLES:
                            cursor.execute(
                                "SELECT to_regclass(%s) IS NOT NULL AND pg_has_role(current_user, c.relowner, 'USAGE')"
                                " FROM pg_class c WHERE c.oid = to_regclass(%s)",
                                [table, table],
                            )
                            row = cursor.fetchone()
                            if row is not None and not row[0]:
                                raise CommandError(
                                    f"role {user} cannot empty the ledger ({table}): flush needs the owner role "
                                    "(DATABASE_OWNER_URL, development and tests only) or a superuser"
                                )
                            if row is not None:
                                cursor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')
                except DatabaseError as exc:
                    raise CommandError(f"role {user} cannot empty the ledger: {exc}") from exc
                super().handle(**options)
                with connection.cursor() as cursor:
                    for table in LEDGER_TABLES:
                        cursor.execute("SELECT to_regclass(%s)", [table])
                        if cursor.fetchone()[0] is not None:
                            cursor.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER USER')
