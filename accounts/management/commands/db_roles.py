"""`manage.py db_roles`: the owner and application PostgreSQL roles (docs/deploy.md, "Database roles").

    manage.py db_roles grant [--app-role NAME]      as the OWNER, right after every `migrate`
    manage.py db_roles setup --owner-role NAME --app-role NAME
                                                    as a SUPERUSER, once (make run does it every start)
    manage.py db_roles check [--app-role NAME]      exit 1 if the application role may too much

`grant` (idempotent) gives the application role exactly its privileges on every table and sequence, the
ledger's tables restricted (accounts/db_roles.py). `setup` creates both roles (or resets their attributes),
makes the owner role own the database and everything in it (for a database migrated by another role),
and takes TEMP and CREATE away from PUBLIC. Passwords come from the environment variables named by
--owner-password-env / --app-password-env (never from the command line, which `ps` shows).
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from accounts.db_roles import (
    RolesError,
    app_role_problems,
    ensure_role,
    grant_app_privileges,
    take_ownership,
)


class Command(BaseCommand):
    help = "Create the owner/application PostgreSQL roles (setup), grant the application role its privileges."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["grant", "setup", "check"])
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument(
            "--app-role",
            default=None,
            help="The application role (default: the DATABASE_APP_ROLE setting / environment variable).",
        )
        parser.add_argument("--owner-role", default=None, help="setup: the owner role.")
        parser.add_argument(
            "--owner-password-env", default=None, metavar="VAR", help="setup: owner's password from $VAR."
        )
        parser.add_argument("--app-password-env", default=None, metavar="VAR", help="setup: app's password from $VAR.")

    def handle(self, *args: Any, **options: Any) -> None:
        app_role = options["app_role"] or getattr(settings, "DATABASE_APP_ROLE", "")
        if not app_role:
            raise CommandError("name the application role: --app-role NAME or DATABASE_APP_ROLE")
        alias = options["database"]
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                if options["action"] == "setup":
                    self._setup(cursor, options, app_role)
                elif options["action"] == "grant":
                    report = grant_app_privileges(cursor, app_role)
                    self.stdout.write(
                        f"Granted {app_role}: {report.tables} tables, {report.sequences} sequences; restricted: "
                        + "; ".join(f"{t} {p}" for t, p in sorted(report.restricted.items()))
                    )
                else:
                    problems = app_role_problems(cursor, app_role)
                    if problems:
                        raise CommandError(f"the application role {app_role} may: {'; '.join(problems)}", returncode=1)
                    self.stdout.write(f"{app_role}: no owner or superuser rights.")
        except RolesError as exc:
            raise CommandError(str(exc)) from exc

    def _setup(self, cursor: Any, options: dict[str, Any], app_role: str) -> None:
        owner_role = options["owner_role"]
        if not owner_role:
            raise CommandError("setup needs --owner-role NAME")
        if owner_role == app_role:
            raise CommandError("the owner and application roles must differ")
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            raise CommandError("setup runs as a superuser (it creates roles and changes owners)")
        # Roles are cluster-wide: serialise concurrent setups (e.g. test processes) on one lock.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('backoffice.db_roles'))")
        for role, env in ((owner_role, options["owner_password_env"]), (app_role, options["app_password_env"])):
            password = os.environ.get(env, "") if env else None
            if env and not password:
                raise CommandError(f"${env} is empty: it should hold the password of {role}")
            created = ensure_role(cursor, role, password=password)
            self.stdout.write(f"{'Created' if created else 'Updated'} role {role}.")
        changed = take_ownership(cursor, owner_role)
        self.stdout.write(f"{owner_role} owns the database and its objects ({changed} changed owner).")
