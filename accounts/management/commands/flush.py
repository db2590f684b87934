"""`flush`, able to empty a database that holds a ledger (development and the test suite only).

The ledger's tables refuse TRUNCATE while they hold posted rows (migrations/0002_ledger_rules.py).
Django's `flush` - run by `manage.py flush` and by pytest-django after every transactional test -
truncates every table, so it runs here with `session_replication_role = replica`, which
PostgreSQL lets only a superuser set and which disables ordinary triggers for this session. A
non-superuser (the production role) cannot: its flush of a database with a ledger fails, as it
should.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as FlushCommand
from django.db import DEFAULT_DB_ALIAS, connections


class Command(FlushCommand):
    help = FlushCommand.help + " Empties the ledger too when connected as a PostgreSQL superuser."

    def handle(self, **options: Any) -> None:
        connection = connections[options.get("database") or DEFAULT_DB_ALIAS]
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('is_superuser') = 'on'")
            row = cursor.fetchone()
        superuser = bool(row and row[0])
        if superuser:
            with connection.cursor() as cursor:
                cursor.execute("SET session_replication_role = replica")
        try:
            super().handle(**options)
        finally:
            if superuser:
                with connection.cursor() as cursor:
                    cursor.execute("SET session_replication_role = DEFAULT")
