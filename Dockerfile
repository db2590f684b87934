# syntax=docker/dockerfile:1
# One image for every Django/Celery process (web, workers, beat, flower, migrate);
# docker-compose.prod.yml picks the command. See docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=backoffice.settings \
    STATIC_ROOT=/app/staticfiles \
    MEDIA_ROOT=/app/media \
    MPESA_SPOOL_DIR=/app/var/mpesa-spool \
    LEDGER_ANCHOR_DIR=/app/var/ledger-anchors \
    BACKUP_DIR=/app/var/backups

# pg_dump and pg_restore of the database server's major version (postgres:16 in docker-compose.prod.yml):
# the backup refuses any other (backoffice/backups.py, pg_tools), since a newer pg_dump writes settings an
# older server rejects on restore. Debian's own repository has one major per release, so they come from
# PostgreSQL's apt repository (PGDG), pinned to PG_MAJOR. curl is only needed for the key and goes again.
# The backup runs in worker-reports, one of the app containers, rather than in a second image built
# FROM postgres:16: one image to build and patch, and the backup is a Celery task like the rest.
ARG PG_MAJOR=16
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && . /etc/os-release \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
    && apt-get purge -y --auto-remove curl \
    && rm -rf /var/lib/apt/lists/* \
    && "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version
ENV PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin

# An unprivileged user with a fixed uid/gid, so volume ownership is stable across rebuilds.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
# Every pin ships a manylinux wheel (psycopg-binary, cryptography, cffi, psutil), so no compiler is needed.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root (read-only for the app user); see .dockerignore for what is left out.
COPY . .

# Static files are collected into the image (served by WhiteNoise). Settings refuse to import without a
# secret key, an M-Pesa encryption key, a ledger anchor key and a DATABASE_URL, but nothing connects at import: these throwaway
# values exist only for this build step and are not kept in the image's environment. MEDIA_ROOT (uploads, job
# exports), MPESA_SPOOL_DIR (callbacks kept while PostgreSQL is down), LEDGER_ANCHOR_DIR (the ledger's anchors)
# and BACKUP_DIR (worker-reports' backups) are the only places the app writes (named volumes in production, which
# take this ownership when first mounted), so they are the only directories it owns.
RUN DJANGO_SECRET_KEY=collectstatic-build-only-not-a-secret \
    MPESA_ENCRYPTION_KEY=Y29sbGVjdHN0YXRpYy1idWlsZC1vbmx5LXVudXNlZCE= \
    LEDGER_ANCHOR_KEY=collectstatic-build-only-not-a-secret-key \
    DATABASE_URL=postgresql://build:build@127.0.0.1:5432/build \
    python manage.py collectstatic --noinput \
    && python -m compileall -q -j 0 /app \
    && mkdir -p "$MEDIA_ROOT" "$MPESA_SPOOL_DIR" "$LEDGER_ANCHOR_DIR" "$BACKUP_DIR" \
    && chown app:app "$MEDIA_ROOT" "$MPESA_SPOOL_DIR" "$LEDGER_ANCHOR_DIR" "$BACKUP_DIR" \
    && chmod 0700 "$MPESA_SPOOL_DIR" "$LEDGER_ANCHOR_DIR" "$BACKUP_DIR"

USER app

EXPOSE 8000

# The web process. Workers, beat (`python -m celeryconf worker|beat`), flower and migrate override the command in
# docker-compose.prod.yml.
# --worker-tmp-dir /dev/shm: gunicorn's worker heartbeat files stay in RAM, not on the overlay filesystem.
# --forwarded-allow-ips '*': only the proxy can reach port 8000 (it is not published), so trust its
# X-Forwarded-* headers.
# --config python:backoffice.gunicorn_conf: the access and error logs show callback tokens as *** (the
# token is the secret of each Daraja callback URL).
CMD ["gunicorn", "backoffice.wsgi", \
     "--config", "python:backoffice.gunicorn_conf", \
     "--bind", "0.0.0.0:8000", \
     "--workers", "3", \
     "--worker-class", "sync", \
     "--max-requests", "1000", \
     "--max-requests-jitter", "100", \
     "--timeout", "30", \
     "--worker-tmp-dir", "/dev/shm", \
     "--forwarded-allow-ips", "*", \
     "--access-logfile", "-"]
