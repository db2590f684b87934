#!/bin/sh
# Run once by the postgres image on an EMPTY data volume (mounted into /docker-entrypoint-initdb.d):
# creates the two roles the back office runs with (docs/deploy.md, "Database roles").
#
# - POSTGRES_OWNER_USER owns the database and, once `migrate` has run as it, every table, sequence and
#   ledger function. Only the migrate service connects as it. Not a superuser.
# - POSTGRES_APP_USER is what web, the workers and beat connect as: it owns nothing; `manage.py db_roles
#   grant` (run by the migrate service after every migration) gives it its privileges on the tables.
# - POSTGRES_BACKUP_USER is what the nightly backup (worker-reports) connects as: it reads every table and
#   sequence (pg_read_all_data; the application role cannot read the ledger's sequences, which pg_dump needs)
#   and may create databases (the scratch copy each backup is restored into to prove it). It writes nothing
#   of the live database and owns nothing in it.
# - POSTGRES_USER, the image's bootstrap superuser, stays for this script and for operations (psql, restores).
#
# An existing volume is not touched by this script: see docs/deploy.md for the one-off SQL.
set -eu

: "${POSTGRES_OWNER_USER:?set POSTGRES_OWNER_USER}" "${POSTGRES_OWNER_PASSWORD:?set POSTGRES_OWNER_PASSWORD}"
: "${POSTGRES_APP_USER:?set POSTGRES_APP_USER}" "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v db="$POSTGRES_DB" \
  -v owner="$POSTGRES_OWNER_USER" -v owner_password="$POSTGRES_OWNER_PASSWORD" \
  -v app="$POSTGRES_APP_USER" -v app_password="$POSTGRES_APP_PASSWORD" \
  -v backup="$POSTGRES_BACKUP_USER" -v backup_password="$POSTGRES_BACKUP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE :"app" LOGIN PASSWORD :'app_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE :"backup" LOGIN PASSWORD :'backup_password'
  NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT pg_read_all_data TO :"backup";
-- The owner role owns the database (so the schema `public`, owned by pg_database_owner, lets it create tables).
ALTER DATABASE :"db" OWNER TO :"owner";
-- Nobody else creates objects or temporary tables; the app role may connect and use the schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
GRANT USAGE ON SCHEMA public TO :"app";
SQL
echo "initdb-roles: created roles $POSTGRES_OWNER_USER (owner), $POSTGRES_APP_USER (application) and $POSTGRES_BACKUP_USER (backup)"
