# syntax=docker/dockerfile:1
#
# safe-migrate: a one-shot image that runs `alembic upgrade` safely against PostgreSQL.
#
#   docker build -t safe-migrate:dev .
#
# The image holds the tool only. An application image adds its own Alembic project on top:
#
#   FROM safe-migrate:1.0.0
#   COPY alembic.ini /app/alembic.ini
#   COPY migrations/ /app/migrations/
#
# (or mounts it at /app). See deploy/README.md. Linted with hadolint by deploy/validate.sh.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Stage 1: the PGDG (apt.postgresql.org) signing key, fetched and checked against its published
# fingerprint. curl and gnupg stay in this stage; the final image only gets the keyring file.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS pgdg-key
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Fingerprint of the key at https://www.postgresql.org/media/keys/ACCC4CF8.asc
ARG PGDG_KEY_FINGERPRINT=B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8
RUN apt-get update \
    && apt-get install -y --no-install-recommends "curl=7.88.*" "gnupg=2.2.*" \
    && rm -rf /var/lib/apt/lists/*
RUN curl -fsSL --proto '=https' https://www.postgresql.org/media/keys/ACCC4CF8.asc -o /tmp/pgdg.asc \
    && gpg --batch --show-keys --with-colons /tmp/pgdg.asc \
       | awk -F: '$1 == "fpr" { print $10; exit }' \
       | grep -qx "${PGDG_KEY_FINGERPRINT}" \
    && gpg --batch --dearmor -o /pgdg.gpg /tmp/pgdg.asc

# ---------------------------------------------------------------------------------------------
# Stage 2: build safe-migrate and its pinned dependencies into a self-contained venv.
# Every dependency has a binary wheel (psycopg[binary]), so no compiler is needed even here.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --constraint deploy/constraints.txt . \
    && /opt/venv/bin/safe-migrate --help > /dev/null

# ---------------------------------------------------------------------------------------------
# Stage 3: runtime. No compilers, no curl/gnupg; a numeric non-root user; works with a
# read-only root filesystem (bytecode is compiled at build time, HOME and temp files go to
# /tmp, artifacts to /artifacts: mount writable volumes there, as deploy/kubernetes does).
#
# pg_dump: the schema snapshots need a pg_dump at least as new as the server, so the image
# carries the newest PostgreSQL the tool supports (18; pg_dump dumps older servers too).
# It comes from the PGDG apt repository, PostgreSQL's own Debian packages and the standard
# way to get a given major version on Debian. (Copying pg_dump out of postgres:18-bookworm
# would also work, but needs libpq and its library closure copied by hand, at architecture-
# specific paths: more brittle than letting apt resolve them.)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PG_MAJOR=18
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=pgdg-key /pgdg.gpg /usr/share/keyrings/pgdg.gpg
RUN echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}=${PG_MAJOR}.*" \
    && rm -rf /var/lib/apt/lists/* \
    && "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version

RUN groupadd --system --gid 10001 safe-migrate \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /tmp \
       --no-create-home --shell /usr/sbin/nologin safe-migrate \
    && mkdir -p /app /artifacts \
    && chown 10001:10001 /artifacts

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SAFE_MIGRATE_ARTIFACTS_DIR=/artifacts \
    SAFE_MIGRATE_PG_DUMP=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump \
    ALEMBIC_CONFIG=/app/alembic.ini

LABEL org.opencontainers.image.title="safe-migrate" \
      org.opencontainers.image.description="One-shot Alembic upgrade job for PostgreSQL"

WORKDIR /app
USER 10001:10001
ENTRYPOINT ["safe-migrate"]
CMD ["upgrade"]
