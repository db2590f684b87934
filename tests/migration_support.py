"""Running one data migration again in a test, as `migrate` runs it.

Transactional tests empty every table after each test, so rows a data migration seeded (beat
schedules, alert rules) are gone; a test that checks them applies the migration's operations again.
"""

from __future__ import annotations

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def data_migration_apply(node: tuple[str, str]) -> None:
    """Apply migration `node` ("app", "name") on the test database, from the state just before it."""
    executor = MigrationExecutor(connection)
    migration = executor.loader.graph.nodes[node]
    state = executor.loader.project_state(node, at_end=False)
    with connection.schema_editor(atomic=migration.atomic) as editor:
        migration.apply(state, editor)
