"""Helpers for the tests: generated Alembic projects, CLI runners, small queries."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import alembic
import psycopg
from sqlalchemy.engine import URL

from runner.embedded import EmbeddedPostgres
from runner.frameworks.alembic import project as runner_project
from runner.urls import env_py_driver

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "basic"


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# -- generated alembic projects -------------------------------------------------------------

# Revision modules several test files use: an accounts table, a nullable column, an index.
CREATE_ACCOUNTS = '''
def upgrade():
    op.create_table("accounts", sa.Column("id", sa.BigInteger, primary_key=True),
                    sa.Column("email", sa.Text, nullable=False))


def downgrade():
    op.drop_table("accounts")
'''
ADD_NICK = '''
def upgrade():
    op.add_column("accounts", sa.Column("nick", sa.Text, nullable=True))


def downgrade():
    op.drop_column("accounts", "nick")
'''
INDEX_EMAIL = '''
def upgrade():
    op.create_index("ix_accounts_email", "accounts", ["email"])


def downgrade():
    op.drop_index("ix_accounts_email", table_name="accounts")
'''

# A revision body's tail that fails while SM_FAIL is set: the same migration, broken then fixed.
FAIL_SWITCH = "if os.environ.get('SM_FAIL'):\n    raise RuntimeError('failing on purpose')"

# A data migration: it reads rows, so it has no offline SQL (lint and plan cannot render it).
READS_ROWS = '''
def upgrade():
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM accounts")).scalar()
    op.execute(f"COMMENT ON TABLE accounts IS 'had {count} rows'")


def downgrade():
    pass
'''

GENERIC_ENV = (REPO / "examples" / "basic" / "env.py").read_text()

# Builds its own engine from another section of the ini file, as many real projects do.
SECTION_ENGINE_ENV = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

def run_migrations_online():
    section = config.get_section("mydb", {})
    section["sqlalchemy.url"] = config.get_main_option("sqlalchemy.url")
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql("SET search_path TO public")
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()

def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

# The cookbook's connection-sharing recipe: config.attributes["connection"].
CONNECTION_ATTRIBUTE_ENV = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

def do_run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()

def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
            poolclass=pool.NullPool)
        with connectable.connect() as connection:
            config.attributes["connection"] = connection
            do_run(connection)
    else:
        do_run(connectable)

def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

# env.py shapes that hand alembic a connection inside a transaction they began themselves.
ENGINE_BEGIN_ENV = GENERIC_ENV.replace("with connectable.connect() as connection:",
                                       "with connectable.begin() as connection:")
CONNECTION_BEGIN_ENV = GENERIC_ENV.replace(
    "        context.configure(\n"
    "            connection=connection, target_metadata=target_metadata\n        )\n\n"
    "        with context.begin_transaction():\n            context.run_migrations()",
    "        with connection.begin():\n            context.configure(\n"
    "                connection=connection, target_metadata=target_metadata\n            )\n"
    "            with context.begin_transaction():\n                context.run_migrations()")
assert ENGINE_BEGIN_ENV != GENERIC_ENV and CONNECTION_BEGIN_ENV != GENERIC_ENV

_ALEMBIC_TEMPLATES = Path(alembic.__file__).parent / "templates"
# alembic's own `async` and `multidb` templates, unchanged.
ASYNC_ENV = (_ALEMBIC_TEMPLATES / "async" / "env.py").read_text()
MULTIDB_ENV = (_ALEMBIC_TEMPLATES / "multidb" / "env.py").read_text()

# Schema per tenant: `-x tenant=acme` picks the schema; the version table lives in it.
TENANT_ENV = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
tenant = context.get_x_argument(as_dictionary=True).get("tenant", "public")

def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'SET search_path TO "{tenant}"')
        context.configure(connection=connection, target_metadata=None,
                          version_table_schema=tenant)
        with context.begin_transaction():
            context.run_migrations()

def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      version_table_schema=tenant)
    with context.begin_transaction():
        context.run_migrations()

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

# Every tenant in one env.py run (`-x tenants=acme,globex`): one version table per schema.
TENANT_LOOP_ENV = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
tenants = context.get_x_argument(as_dictionary=True)["tenants"].split(",")

engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                            prefix="sqlalchemy.", poolclass=pool.NullPool)
for tenant in tenants:
    with engine.connect() as connection:
        connection.exec_driver_sql(f'SET search_path TO "{tenant}"')
        context.configure(connection=connection, target_metadata=None,
                          version_table_schema=tenant)
        with context.begin_transaction():
            context.run_migrations()
'''

ENV_STYLES = {"generic": GENERIC_ENV, "section-engine": SECTION_ENGINE_ENV,
              "connection-attribute": CONNECTION_ATTRIBUTE_ENV,
              "engine-begin": ENGINE_BEGIN_ENV, "connection-begin": CONNECTION_BEGIN_ENV,
              "async": ASYNC_ENV, "multidb": MULTIDB_ENV, "tenant": TENANT_ENV,
              "tenant-loop": TENANT_LOOP_ENV}


# What each driver does that psycopg 3 does not: asyncpg leaves a lone % alone in
# exec_driver_sql (psycopg 3: "only '%s', '%b', '%t' are allowed"); psycopg2 interpolates a
# str parameter client-side, where SQLAlchemy's psycopg 3 dialect renders a ::VARCHAR cast
# (an integer column then refuses it, SQLSTATE 42804).
ON_THE_USERS_DRIVER = {
    "asyncpg": "assert op.get_bind().exec_driver_sql("
               "\"SELECT format('%I.%I', 'a', 'b')\").scalar() == 'a.b'",
    "psycopg2": "op.execute('CREATE TABLE nums (n int)')\n"
                "op.get_bind().execute(sa.text('INSERT INTO nums (n) VALUES (:n)'), {'n': '5'})",
}
RAN_ON = "op.execute(f'CREATE TABLE ran_on_{op.get_bind().dialect.driver} (id int)')"


@dataclass
class Server:
    url: URL  # maintenance database URL
    embedded: EmbeddedPostgres | None

    def database_url(self, name: str) -> URL:
        return self.url.set(database=name)

    def create_database(self) -> URL:
        name = f"sm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, url: URL) -> None:
        assert url.database and url.database.startswith("sm_test_")
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

    @property
    def pg_dump(self) -> str | None:
        """A pg_dump at least as new as the server: the embedded package's is PostgreSQL 18."""
        from runner.embedded import bin_dir

        return str(bin_dir() / "pg_dump")


def revision_header(rev: str, down: str | None) -> str:
    return (f'"""revision {rev}"""\nimport os\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
            f"depends_on = None\n\n")


def revision_source(rev: str, down: str | None, upgrade: str, downgrade: str = "pass") -> str:
    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")

    return (revision_header(rev, down) + f"\ndef upgrade():\n{body(upgrade)}\n\n\n"
            f"def downgrade():\n{body(downgrade)}\n")


def chained(revisions: list[tuple[str, str]]) -> list[tuple[str, str | None, str]]:
    """[(rev, module)] as a linear history: each revision on the one before."""
    downs: list[str | None] = [None, *(rev for rev, _ in revisions[:-1])]
    return [(rev, down, module) for (rev, module), down in zip(revisions, downs, strict=True)]


@dataclass
class Project:
    root: Path

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def add(self, rev: str, down: str | None, upgrade: str, downgrade: str = "pass") -> Path:
        path = self.versions / f"{rev}.py"
        path.write_text(revision_source(rev, down, upgrade, downgrade))
        return path

    def add_modules(self, revisions: list[tuple[str, str | None, str]]) -> Project:
        """Revisions given as module text after the header: (rev, down_revision, text)."""
        for rev, down, module in revisions:
            (self.versions / f"{rev}.py").write_text(revision_header(rev, down) + module)
        return self


def write_project(root: Path, revisions: list[tuple[str, str]], env_style: str = "generic",
                  url: URL | None = None) -> Project:
    """A linear history: revisions is [(rev_id, upgrade body)], each on the one before."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "versions").mkdir(exist_ok=True)
    (root / "env.py").write_text(ENV_STYLES[env_style])
    (root / "script.py.mako").write_text((REPO / "examples/basic/script.py.mako").read_text())
    ini_url = (url.render_as_string(hide_password=False).replace("%", "%%") if url
               else f"{env_py_driver()}://nobody@127.0.0.1:1/none")
    (root / "alembic.ini").write_text(textwrap.dedent(f"""\
        [alembic]
        script_location = %(here)s
        prepend_sys_path = .
        path_separator = os
        sqlalchemy.url = {ini_url}

        [mydb]
        sqlalchemy.echo = false

        [loggers]
        keys = root,sqlalchemy,alembic

        [handlers]
        keys = console

        [formatters]
        keys = generic

        [logger_root]
        level = WARNING
        handlers = console

        [logger_sqlalchemy]
        level = WARNING
        handlers =
        qualname = sqlalchemy.engine

        [logger_alembic]
        level = INFO
        handlers =
        qualname = alembic

        [handler_console]
        class = StreamHandler
        args = (sys.stderr,)
        level = NOTSET
        formatter = generic

        [formatter_generic]
        format = %%(levelname)-5.5s [%%(name)s] %%(message)s
        """))
    project = Project(root)
    down: str | None = None
    for rev, body in revisions:
        project.add(rev, down, body)
        down = rev
    return project


# -- running the CLI ---------------------------------------------------------------------------

def cli_args(project: Project, db: URL, *extra: str, command: str = "upgrade",
             artifacts: Path | None = None) -> list[str]:
    args = [command, "-c", str(project.ini), "--database-url",
            db.render_as_string(hide_password=False), "--log-format", "json"]
    if artifacts is not None:
        args += ["--artifacts-dir", str(artifacts)]
    return args + list(extra)


def run_dir(parent: Path) -> Path:
    """The newest run's folder under --artifacts-dir (always a parent: DIR/<run-id>/)."""
    runs = sorted((child for child in parent.iterdir() if (child / "run.json").is_file()),
                  key=lambda child: ((child / "run.json").stat().st_mtime, child.name))
    assert runs, f"no run under {parent}"
    return runs[-1]


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """`python -m runner ...` as a child process: for signals, kills and concurrency."""
    from runner.embedded import bin_dir

    if args[0] == "upgrade" and "--pg-dump" not in args:
        args = [*args, "--pg-dump", str(bin_dir() / "pg_dump")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "runner", *args, "--termination-log",
                             os.devnull], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=kwargs.pop("cwd", None), **kwargs)


def json_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def version_of(sql: Callable[..., list[tuple[Any, ...]]]) -> list[str]:
    if not sql("SELECT to_regclass('public.alembic_version')")[0][0]:
        return []
    return [row[0] for row in sql("SELECT version_num FROM alembic_version")]


def tables_of(sql: Callable[..., list[tuple[Any, ...]]]) -> set[str]:
    return {row[0] for row in sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")} - {
        "alembic_version", "safe_migrate_runs"}


def advisory_locks(sql: Callable[..., list[tuple[Any, ...]]]) -> int:
    return int(sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0])


#: The conftest `make_project` fixture: make_project(revisions, env_style="generic", url=None).
MakeProject = Callable[..., Project]


def load_alembic_project(ini: Path) -> runner_project.Project:
    """The runner's view of a project (alembic Config + ScriptDirectory), as the CLI loads it."""
    from runner.main import build_parser
    from runner.settings import from_args

    return runner_project.load_project(
        from_args(build_parser().parse_args(["plan", "-c", str(ini)])))


@contextlib.contextmanager
def open_transaction(db: URL, statement: str, *, hold: float) -> Iterator[int]:
    """Another session runs `statement` and keeps its transaction open (holding its locks)
    for at most `hold` seconds, in a thread; yields that session's pid. Leaving the block
    ends the transaction at once if it is still open."""
    started, release, pid = threading.Event(), threading.Event(), []

    def run() -> None:
        with psycopg.connect(libpq(db)) as conn:
            conn.execute(statement)  # type: ignore[arg-type]
            pid.append(conn.info.backend_pid)
            started.set()
            release.wait(hold)
            conn.rollback()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(10), "the blocking session did not start"
        yield pid[0]
    finally:
        release.set()
        thread.join()
