"""The two PostgreSQL roles the back office runs with (docs/deploy.md, "Database roles").

- The OWNER role runs the migrations: it owns the tables, sequences and the ledger's functions. It is
  not a superuser, so it cannot set session_replication_role, but as the owner it could still disable
  a trigger: no application process ever connects as it.
- The APPLICATION role (web, workers, beat) owns nothing and holds only the privileges granted here:
  it cannot ALTER a table (disable a trigger), TRUNCATE, create objects in the schema or temporary
  tables, nor UPDATE/DELETE the ledger's rows.

`grant_app_privileges` runs as the owner right after every `migrate` (`manage.py db_roles grant`), so
tables added by later migrations are covered. New tables get nothing until then (no default privileges
on purpose): a forgotten grant fails loudly instead of leaving a new ledger table writable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from psycopg import sql


class Cursor(Protocol):
    """A DB-API cursor (Django's or psycopg's) that accepts psycopg.sql compositions."""

    def execute(self, query: Any, params: Sequence[Any] | None = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Sequence[Any]: ...


# Every table of the schema gets FULL, except these. The ledger is append-only: no UPDATE or DELETE,
# and no table gets TRUNCATE. A column name restricts the privilege to those columns.
FULL: dict[str, tuple[str, ...]] = {"SELECT": (), "INSERT": (), "UPDATE": (), "DELETE": ()}
RESTRICTED: dict[str, dict[str, tuple[str, ...]]] = {
    "accounts_journalentry": {"SELECT": (), "INSERT": ()},
    "accounts_journalline": {"SELECT": (), "INSERT": ()},
    # Written only by the ledger's triggers (see TRIGGER_WRITES): the seals, the daily totals and the
    # audit row of each lock-date move (PostgreSQL writes it; the service never inserts one).
    "accounts_periodclose": {"SELECT": ()},
    "accounts_entryseal": {"SELECT": ()},
    "accounts_accountdaytotal": {"SELECT": ()},
    # Closing a period moves lock_date (SELECT ... FOR UPDATE needs UPDATE on a column too); deleting a
    # business deletes its books, which the books guard refuses once they hold entries.
    "accounts_books": {"SELECT": (), "INSERT": (), "UPDATE": ("lock_date",), "DELETE": ()},
    # The migration history is the owner's business.
    "django_migrations": {"SELECT": ()},
}
LEDGER_TABLES = tuple(t for t in RESTRICTED if t.startswith("accounts_"))
# Whatever the triggers need: the application role never updates nor deletes these rows.
NEVER_CHANGED = ("accounts_journalentry", "accounts_journalline", "accounts_entryseal", "accounts_periodclose")

# What each ledger trigger function writes. Since migrations/0004_ledger_holes.py all four are SECURITY
# DEFINER (they run as the owner of the tables), so the application role gets none of these: the
# guards refuse such writes to it anyway. Should one be found running with the caller's rights (its
# SECURITY DEFINER dropped by a later migration), the caller would need them: then, and only then,
# the application role gets that function's privileges.
TRIGGER_WRITES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "ledger_entry_before_insert": {"accounts_books": {"UPDATE": ("last_number",)}},
    "ledger_entry_seal": {"accounts_entryseal": {"INSERT": ()}},
    # INSERT ... ON CONFLICT DO UPDATE on the daily totals.
    "ledger_lines_inserted": {"accounts_accountdaytotal": {"INSERT": (), "UPDATE": ()}},
    # The audit row of every lock-date move.
    "ledger_books_lock_date_moved": {"accounts_periodclose": {"INSERT": ()}},
}


class RolesError(Exception):
    """The database or the roles are not as the two-role setup needs (message says what to do)."""


@dataclass
class GrantReport:
    tables: int = 0
    sequences: int = 0
    restricted: dict[str, str] = field(default_factory=dict)


def _merge(target: dict[str, tuple[str, ...]], extra: dict[str, tuple[str, ...]]) -> None:
    for privilege, columns in extra.items():
        if privilege in target and (not target[privilege] or not columns):
            target[privilege] = ()
        else:
            target[privilege] = tuple(sorted({*target.get(privilege, ()), *columns}))


def invoker_rights_functions(cursor: Cursor) -> set[str]:
    """The ledger trigger functions (of TRIGGER_WRITES) that run with the caller's rights."""
    cursor.execute(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = current_schema() AND p.proname = ANY(%s) AND NOT p.prosecdef",
        [list(TRIGGER_WRITES)],
    )
    return {row[0] for row in cursor.fetchall()}


def app_privileges(table: str, invoker_functions: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The application role's privileges on `table`: privilege -> columns (empty: the whole table)."""
    privileges = dict(RESTRICTED.get(table, FULL))
    for function in invoker_functions:
        _merge(privileges, TRIGGER_WRITES[function].get(table, {}))
    return privileges


def _privilege_sql(privileges: dict[str, tuple[str, ...]]) -> sql.Composable:
    parts: list[sql.Composable] = []
    for privilege, columns in sorted(privileges.items()):
        if columns:
            parts.append(
                sql.SQL("{} ({})").format(sql.SQL(privilege), sql.SQL(", ").join(map(sql.Identifier, columns)))
            )
        else:
            parts.append(sql.SQL(privilege))
    return sql.SQL(", ").join(parts)


def role_exists(cursor: Cursor, role: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


def grant_app_privileges(cursor: Cursor, app_role: str) -> GrantReport:
    """Give `app_role` exactly its privileges on every table and sequence of the current schema.

    Runs as the owner of the tables, in the caller's transaction; idempotent (revokes, then grants).
    Also takes TEMP on the database and CREATE on the schema away from PUBLIC where the owner may.
    """
    c = cursor
    if not role_exists(c, app_role):
        raise RolesError(f"role {app_role!r} does not exist: create it first (docs/deploy.md, 'Database roles')")
    c.execute(
        "SELECT current_user, current_database(), current_schema(), r.rolsuper, a.rolsuper,"
        " pg_has_role(%s, current_user, 'MEMBER')"
        " FROM pg_roles r, pg_roles a WHERE r.rolname = current_user AND a.rolname = %s",
        [app_role, app_role],
    )
    me, database, schema, _me_super, app_super, app_is_owner = c.fetchone()
    if app_role == me or app_is_owner:
        raise RolesError(f"the application role {app_role!r} must not be (a member of) the owner role {me!r}")
    if app_super:
        raise RolesError(f"the application role {app_role!r} is a superuser: ALTER ROLE {app_role} NOSUPERUSER")
    c.execute(
        "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner),"
        " (SELECT t.relname FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid"
        "   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass"
        "   AND d.deptype IN ('a', 'i') LIMIT 1)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY c.relname"
    )
    relations = c.fetchall()
    foreign = sorted(f"{name} ({owner})" for name, _kind, owner, _table in relations if owner != me)
    if foreign:
        raise RolesError(
            f"run this as the owner of every table: {me!r} does not own {', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''} (docs/deploy.md, 'Database roles': ALTER ... OWNER TO)"
        )
    invoker = invoker_rights_functions(c)
    app = sql.Identifier(app_role)
    report = GrantReport()
    for name, kind, _owner, of_table in relations:
        table = sql.Identifier(schema, name)
        if kind == "S":
            # UPDATE (setval): django-import-export resets the id sequence after an import. Never for the
            # ledger's: moving its sequences back would only make postings fail.
            usage = "USAGE" if of_table in RESTRICTED else "USAGE, SELECT, UPDATE"
            c.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(table, app))
            c.execute(sql.SQL("GRANT " + usage + " ON SEQUENCE {} TO {}").format(table, app))
            report.sequences += 1
            continue
        # Revoking a table privilege revokes the same privilege on each column as well.
        c.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(table, app))
        privileges = app_privileges(name, invoker) if kind in ("r", "p") else {"SELECT": ()}
        c.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(_privilege_sql(privileges), table, app))
        report.tables += 1
        if name in RESTRICTED:
            report.restricted[name] = _privilege_sql(privileges).as_string(None)
    c.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), app))
    c.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), app))
    # PUBLIC (every role) may create temporary tables and, before PostgreSQL 15, objects in `public`.
    c.execute(
        "SELECT pg_has_role(current_user, d.datdba, 'USAGE'), pg_has_role(current_user, s.nspowner, 'USAGE')"
        " FROM pg_database d, pg_namespace s WHERE d.datname = current_database() AND s.nspname = current_schema()"
    )
    owns_database, owns_schema = c.fetchone()
    if owns_database:
        c.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
        c.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(sql.Identifier(database), app))
    if owns_schema:
        c.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema)))
        c.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), app))
    problems = app_role_problems(c, app_role)
    if problems:
        raise RolesError(f"the application role {app_role!r} still may: {'; '.join(problems)}")
    return report


def app_role_problems(cursor: Cursor, app_role: str) -> list[str]:
    """What `app_role` may do that it must not, in the current database (empty: nothing)."""
    c = cursor
    c.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication,"
        " has_database_privilege(rolname, current_database(), 'CREATE'),"
        " has_database_privilege(rolname, current_database(), 'TEMPORARY'),"
        " has_schema_privilege(rolname, current_schema(), 'CREATE')"
        " FROM pg_roles WHERE rolname = %s",
        [app_role],
    )
    row = c.fetchone()
    if row is None:
        return [f"role {app_role!r} does not exist"]
    labels = (
        "be a superuser",
        "create roles",
        "create databases",
        "bypass row security",
        "replicate",
        "create schemas in the database",
        "create temporary tables (REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC)",
        "create objects in the schema (REVOKE CREATE ON SCHEMA ... FROM PUBLIC)",
    )
    problems = [label for label, bad in zip(labels, row, strict=True) if bad]
    c.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND pg_has_role(%s, c.relowner, 'USAGE') ORDER BY 1 LIMIT 5",
        [app_role],
    )
    owned = [r[0] for r in c.fetchall()]
    if owned:
        problems.append(f"own tables ({', '.join(owned)})")
    c.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        " AND (has_table_privilege(%s, c.oid, 'TRUNCATE') OR has_table_privilege(%s, c.oid, 'TRIGGER')"
        "      OR (c.relname = ANY(%s) AND (has_table_privilege(%s, c.oid, 'DELETE')"
        "                                   OR has_any_column_privilege(%s, c.oid, 'UPDATE'))))"
        " ORDER BY 1",
        [app_role, app_role, list(NEVER_CHANGED), app_role, app_role],
    )
    problems.extend(f"empty or change {row[0]}" for row in c.fetchall())
    # What the SECURITY DEFINER trigger functions write, the application role must not write itself.
    invoker = invoker_rights_functions(c)
    for function, writes in TRIGGER_WRITES.items():
        if function in invoker:
            continue
        for table, privileges in writes.items():
            for privilege, columns in privileges.items():
                if columns:
                    c.execute(
                        "SELECT coalesce(bool_or(has_column_privilege(%s, to_regclass(%s), col, %s)), false)"
                        " FROM unnest(%s::text[]) AS col WHERE to_regclass(%s) IS NOT NULL",
                        [app_role, table, privilege, list(columns), table],
                    )
                else:
                    c.execute(
                        "SELECT to_regclass(%s) IS NOT NULL AND has_any_column_privilege(%s, to_regclass(%s), %s)",
                        [table, app_role, table, privilege],
                    )
                if c.fetchone()[0]:
                    target = f"{table} ({', '.join(columns)})" if columns else table
                    problems.append(f"{privilege} {target}, which only the ledger's triggers write")
    return problems


def ensure_role(cursor: Cursor, role: str, *, password: str | None, createdb: bool = False) -> bool:
    """Create `role` (LOGIN, no superuser rights) or reset its attributes; True when it was created."""
    attributes: sql.Composable = sql.SQL(
        "LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT " + ("CREATEDB" if createdb else "NOCREATEDB")
    )
    if password:
        attributes = sql.SQL("{} PASSWORD {}").format(attributes, sql.Literal(password))
    created = not role_exists(cursor, role)
    verb = "CREATE" if created else "ALTER"
    cursor.execute(sql.SQL(verb + " ROLE {} {}").format(sql.Identifier(role), attributes))
    return created


def take_ownership(cursor: Cursor, owner_role: str) -> int:
    """Make `owner_role` the owner of the database, schema objects and functions (as a superuser).

    For a database first migrated by another role (an install from before the two roles, or `make run`'s
    embedded database). Returns the number of objects whose owner changed.
    """
    c = cursor
    owner = sql.Identifier(owner_role)
    c.execute("SELECT current_database(), current_schema()")
    database, schema = c.fetchone()
    c.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), owner))
    # Tables, views and sequences that are not owned by a column (those follow their table).
    c.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        " AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
        "                 AND d.deptype IN ('a', 'i'))",
        [owner_role],
    )
    changed = 0
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
    for name, kind in c.fetchall():
        statement = sql.SQL("ALTER " + kinds[kind] + " {} OWNER TO {}")
        c.execute(statement.format(sql.Identifier(schema, name), owner))
        changed += 1
    c.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = current_schema() AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid"
        "                 AND d.deptype = 'e')",
        [owner_role],
    )
    for (signature,) in c.fetchall():
        c.execute(sql.SQL("ALTER ROUTINE " + signature + " OWNER TO {}").format(owner))
        changed += 1
    # The migrations create tables in the schema; nobody else may.
    c.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema), owner))
    c.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema)))
    c.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
    return changed
