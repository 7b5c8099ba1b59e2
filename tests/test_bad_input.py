"""Bad input of every kind: the SPEC's exit code, one error line naming the problem, no
traceback (unless --debug), and the database exactly as it was before.

Each case sets up its own broken project/flags/environment on a fresh database that already
has one applied revision (r1), runs `main()` in-process, and compares a catalog snapshot of the
database before and after.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from structlog.testing import capture_logs
from support import Project

from runner.embedded import EmbeddedPostgres, bin_dir
from runner.main import main

OLD_PG_DUMP = Path("/usr/lib/postgresql/15/bin/pg_dump")
EXTERNAL_SERVER = bool(os.environ.get("SAFE_MIGRATE_TEST_SERVER_URL"))

R1 = "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"
R2 = "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"

SCHEMA_QUERY = """
SELECT table_name, column_name, data_type FROM information_schema.columns
WHERE table_schema = 'public' ORDER BY 1, 2
"""


@pytest.fixture(scope="module")
def pw_server() -> Iterator[EmbeddedPostgres]:
    """A password-protected server, for the wrong-password case."""
    with EmbeddedPostgres(password="Right-Horse-7710") as pg:
        yield pg


@dataclass
class Ctx:
    tmp_path: Path
    db: URL
    sql: Callable[..., list[tuple[Any, ...]]]
    make_project: Callable[..., Project]
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest

    @property
    def url(self) -> str:
        return self.db.render_as_string(hide_password=False)

    def project(self, revisions: list[tuple[str, str]] | None = None) -> Project:
        return self.make_project(revisions if revisions is not None else [("r1", R1), ("r2", R2)])

    def args(self, project: Project, *extra: str, command: str = "upgrade",
             url: str | None = None) -> list[str]:
        return [command, "-c", str(project.ini), "--database-url", url or self.url,
                "--log-format", "json", "--artifacts-dir", str(self.tmp_path / "artifacts"),
                *extra]


def snapshot(sql: Callable[..., list[tuple[Any, ...]]]) -> dict[str, Any]:
    state: dict[str, Any] = {"columns": sql(SCHEMA_QUERY)}
    state["versions"] = (sorted(sql("SELECT version_num FROM alembic_version"))
                         if sql("SELECT to_regclass('public.alembic_version')")[0][0] else None)
    state["indexes"] = sql("SELECT indexname, indexdef FROM pg_indexes "
                           "WHERE schemaname = 'public' ORDER BY 1")
    return state


def run_main(ctx: Ctx, argv: list[str]) -> int:
    if argv and argv[0] == "upgrade" and "--pg-dump" not in argv:
        argv = [*argv, "--pg-dump", str(bin_dir() / "pg_dump")]
    argv = [*argv, "--termination-log", str(ctx.tmp_path / "termination-log")]
    with capture_logs():
        return main(argv, configure_logging=False)


# -- the cases: each returns argv (and may change files / environment through ctx) ------------

def unknown_flag(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--frobnicate")


def lock_timeout_unit(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-timeout", "5x")


def lock_timeout_negative(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-timeout", "-1s")  # argparse: "expected one argument"


def lock_timeout_negative_eq(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-timeout=-1s")


def statement_timeout_abc(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--statement-timeout", "abc")


def advisory_lock_wait_year(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--advisory-lock-wait", "1y")


def lock_retries_negative(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-retries", "-2")


def lock_retries_words(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-retries", "many")


def log_format_xml(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--log-format", "xml")


def missing_ini(ctx: Ctx) -> list[str]:
    project = ctx.project()
    project.ini.unlink()
    return ctx.args(project)


def ini_is_directory(ctx: Ctx) -> list[str]:
    project = ctx.project()
    project.ini.unlink()
    project.ini.mkdir()
    return ctx.args(project)


def unreadable_ini(ctx: Ctx) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file anyway (ini_is_directory covers unreadable)")
    project = ctx.project()
    project.ini.chmod(0)
    ctx.request.addfinalizer(lambda: project.ini.chmod(0o644))
    return ctx.args(project)


def ini_without_section(ctx: Ctx) -> list[str]:
    project = ctx.project()
    text = project.ini.read_text().replace("[alembic]", "[not_alembic]")
    project.ini.write_text(text)
    return ctx.args(project)


def bad_script_location(ctx: Ctx) -> list[str]:
    project = ctx.project()
    text = project.ini.read_text().replace("script_location = %(here)s",
                                           "script_location = %(here)s/no-such-dir")
    project.ini.write_text(text)
    return ctx.args(project)


def malformed_url(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), url="not a url")


def mysql_url(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), url="mysql://user:pw@127.0.0.1:3306/app")


def wrong_password(ctx: Ctx) -> list[str]:
    pg: EmbeddedPostgres = ctx.request.getfixturevalue("pw_server")
    url = pg.url("postgres").set(password="Wrong-Horse-0000").render_as_string(
        hide_password=False)
    return ctx.args(ctx.project(), "--connect-timeout", "1s", url=url)


def unreachable_host(ctx: Ctx) -> list[str]:
    url = ctx.db.set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    return ctx.args(ctx.project(), "--connect-timeout", "1s", url=url)


def missing_database(ctx: Ctx) -> list[str]:
    url = ctx.db.set(database=f"sm_test_missing_{uuid.uuid4().hex[:8]}").render_as_string(
        hide_password=False)
    return ctx.args(ctx.project(), "--connect-timeout", "1s", url=url)


def read_only_role(ctx: Ctx) -> list[str]:
    role = f"sm_ro_{uuid.uuid4().hex[:8]}"
    password = "ro-pw-1234"
    ctx.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    ctx.sql(f'GRANT CONNECT ON DATABASE "{ctx.db.database}" TO {role}')
    ctx.sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    ctx.sql(f"GRANT USAGE ON SCHEMA public TO {role}")
    ctx.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON alembic_version TO {role}")
    ctx.sql(f"GRANT SELECT ON t1 TO {role}")

    def drop() -> None:
        ctx.sql(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        ctx.sql(f"REVOKE ALL ON SCHEMA public FROM {role}")
        ctx.sql(f'REVOKE ALL ON DATABASE "{ctx.db.database}" FROM {role}')
        ctx.sql(f"DROP ROLE IF EXISTS {role}")

    ctx.request.addfinalizer(drop)
    url = ctx.db.set(username=role, password=password).render_as_string(hide_password=False)
    return ctx.args(ctx.project(), url=url)


def read_only_role_no_ledger(ctx: Ctx) -> list[str]:
    """Without the ledger the run gets as far as the migration, which fails (exit 5)."""
    return [*read_only_role(ctx), "--no-ledger"]


def migration_syntax_error(ctx: Ctx) -> list[str]:
    project = ctx.project()
    path = project.versions / "r2.py"
    path.write_text(path.read_text().replace("def upgrade():", "def upgrade(:"))
    return ctx.args(project)


def migration_raises(ctx: Ctx) -> list[str]:
    project = ctx.project([("r1", R1), ("r2", R2 + "\nraise RuntimeError('boom-in-r2')")])
    return ctx.args(project)


def migration_raises_debug(ctx: Ctx) -> list[str]:
    return [*migration_raises(ctx), "--debug"]


def duplicate_revision(ctx: Ctx) -> list[str]:
    project = ctx.project()
    source = (project.versions / "r2.py").read_text()
    (project.versions / "r2_copy.py").write_text(source.replace("'t2'", "'t2b'"))
    return ctx.args(project)


def missing_down_revision(ctx: Ctx) -> list[str]:
    project = ctx.project()
    project.add("r3", "r_gone", "op.create_table('t3', sa.Column('id', sa.Integer))")
    return ctx.args(project)


def multiple_heads(ctx: Ctx) -> list[str]:
    project = ctx.project()
    project.add("r2b", "r1", "op.create_table('t2b', sa.Column('id', sa.Integer))")
    return ctx.args(project)


def unknown_db_revision(ctx: Ctx) -> list[str]:
    ctx.sql("UPDATE alembic_version SET version_num = 'r_unknown'")
    return ctx.args(ctx.project())


def missing_pg_dump(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--pg-dump", "/nonexistent/pg_dump")


def old_pg_dump(ctx: Ctx) -> list[str]:
    if EXTERNAL_SERVER:
        pytest.skip("the old pg_dump is only older than the embedded PostgreSQL 18")
    if not OLD_PG_DUMP.exists():
        pytest.skip(f"{OLD_PG_DUMP} not installed")
    return ctx.args(ctx.project(), "--pg-dump", str(OLD_PG_DUMP))


def artifacts_under_file(ctx: Ctx) -> list[str]:
    blocker = ctx.tmp_path / "a-regular-file"
    blocker.write_text("x")
    return ctx.args(ctx.project(), "--artifacts-dir", str(blocker / "sub"))


def empty_versions(ctx: Ctx) -> list[str]:
    project = ctx.project()
    for path in project.versions.glob("*.py"):
        path.unlink()
    return ctx.args(project)


def unknown_target(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "r_nowhere")


def url_file_missing(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.delenv("DATABASE_URL", raising=False)
    ctx.monkeypatch.setenv("DATABASE_URL_FILE", str(ctx.tmp_path / "no-such-secret"))
    args = ctx.args(ctx.project())
    i = args.index("--database-url")
    return args[:i] + args[i + 2:]


def url_file_empty(ctx: Ctx) -> list[str]:
    secret = ctx.tmp_path / "empty-secret"
    secret.write_text("\n")
    ctx.monkeypatch.delenv("DATABASE_URL", raising=False)
    ctx.monkeypatch.setenv("DATABASE_URL_FILE", str(secret))
    args = ctx.args(ctx.project())
    i = args.index("--database-url")
    return args[:i] + args[i + 2:]


def env_py_raises(ctx: Ctx) -> list[str]:
    project = ctx.project()
    env = project.root / "env.py"
    env.write_text("raise ImportError('env-py-is-broken')\n" + env.read_text())
    return ctx.args(project)


def plan_without_database(ctx: Ctx) -> list[str]:
    project = ctx.project()
    ini = project.ini.read_text()
    project.ini.write_text("\n".join("sqlalchemy.url =" if line.startswith("sqlalchemy.url")
                                     else line for line in ini.splitlines()) + "\n")
    ctx.monkeypatch.delenv("DATABASE_URL", raising=False)
    ctx.monkeypatch.delenv("DATABASE_URL_FILE", raising=False)
    return ["plan", "-c", str(project.ini), "--log-format", "json"]


def recover_without_yes(ctx: Ctx) -> list[str]:
    project = ctx.project([("r1", R1), ("r2", R2 + "\nop.execute('SELECT * FROM nope_table')")])
    # A failed run first, so that recover has a plan to execute.
    assert run_main(ctx, ctx.args(project)) == 5
    ctx.monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, even with -s
    return ctx.args(project, "--execute", command="recover")


def unknown_subcommand(ctx: Ctx) -> list[str]:
    args = ctx.args(ctx.project())
    return ["frobnicate", *args[1:]]


def revision_cycle(ctx: Ctx) -> list[str]:
    project = ctx.project()
    path = project.versions / "r1.py"
    path.write_text(path.read_text().replace("down_revision = None", "down_revision = 'r2'"))
    return ctx.args(project)


def lock_timeout_bare_number(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--lock-timeout", "2")  # 2 s or PostgreSQL's 2 ms?


def option_the_command_does_not_use(ctx: Ctx) -> list[str]:
    args = ctx.args(ctx.project(), "--lock-retries", "3", command="status")
    i = args.index("--artifacts-dir")
    return args[:i] + args[i + 2:]


def recover_embedded(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "--embedded", command="recover")


def no_database_url(ctx: Ctx) -> list[str]:
    project = ctx.project()
    ini = project.ini.read_text()
    project.ini.write_text("\n".join("sqlalchemy.url =" if line.startswith("sqlalchemy.url")
                                     else line for line in ini.splitlines()) + "\n")
    args = ctx.args(project)
    i = args.index("--database-url")
    return args[:i] + args[i + 2:]


def async_url_without_asyncpg(ctx: Ctx) -> list[str]:
    if importlib.util.find_spec("asyncpg") is not None:
        pytest.skip("asyncpg is installed")
    project = ctx.project()
    url = ctx.db.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    ini = project.ini.read_text()
    project.ini.write_text("\n".join(f"sqlalchemy.url = {url.replace('%', '%%')}"
                                     if line.startswith("sqlalchemy.url") else line
                                     for line in ini.splitlines()) + "\n")
    args = ctx.args(project)
    i = args.index("--database-url")
    return args[:i] + args[i + 2:]


def _limited_role(ctx: Ctx, *grants: str) -> str:
    """A login role with USAGE on public and the given grants (CREATE on public revoked from
    PUBLIC); dropped at the end of the test. Returns its URL."""
    role = f"sm_lim_{uuid.uuid4().hex[:8]}"
    password = "lim-pw-1234"
    ctx.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    ctx.sql(f'GRANT CONNECT ON DATABASE "{ctx.db.database}" TO {role}')
    ctx.sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    ctx.sql(f"GRANT USAGE ON SCHEMA public TO {role}")
    for grant in grants:
        ctx.sql(grant.format(role=role))

    def drop() -> None:
        ctx.sql(f"DROP OWNED BY {role}")
        ctx.sql(f"DROP ROLE IF EXISTS {role}")

    ctx.request.addfinalizer(drop)
    return ctx.db.set(username=role, password=password).render_as_string(hide_password=False)


def no_create_on_schema(ctx: Ctx) -> list[str]:
    """A fresh database (no version table yet) and a role that cannot create in the schema:
    the run ledger is the first thing it cannot create."""
    ctx.sql("DROP TABLE alembic_version, t1")
    ctx.sql("DROP TABLE IF EXISTS safe_migrate_runs")
    return ctx.args(ctx.project(), url=_limited_role(ctx))


def no_create_on_schema_no_ledger(ctx: Ctx) -> list[str]:
    """...and without the ledger: alembic's CREATE TABLE alembic_version is refused."""
    return [*no_create_on_schema(ctx), "--no-ledger"]


def not_version_table_owner(ctx: Ctx) -> list[str]:
    """The role may create in the schema, but the version table is another role's and it
    has no privilege on it."""
    url = _limited_role(ctx, "GRANT CREATE ON SCHEMA public TO {role}")
    return ctx.args(ctx.project(), "--no-ledger", url=url)


def not_version_table_owner_ledger(ctx: Ctx) -> list[str]:
    return not_version_table_owner(ctx)[:-1]  # the ledger could be created: the table cannot


def read_only_database(ctx: Ctx) -> list[str]:
    ctx.sql(f'ALTER DATABASE "{ctx.db.database}" SET default_transaction_read_only = on')
    return ctx.args(ctx.project())


def read_only_database_no_ledger(ctx: Ctx) -> list[str]:
    return [*read_only_database(ctx), "--no-ledger"]


def missing_version_schema(ctx: Ctx) -> list[str]:
    project = ctx.project()
    env = project.root / "env.py"
    env.write_text(env.read_text().replace(
        "connection=connection, target_metadata=target_metadata",
        "connection=connection, target_metadata=target_metadata, version_table_schema='nope'"))
    return ctx.args(project, "--no-ledger")


def missing_version_schema_ledger(ctx: Ctx) -> list[str]:
    return missing_version_schema(ctx)[:-1]


def two_version_rows(ctx: Ctx) -> list[str]:
    """An unbranched history, yet the version table names two revisions."""
    project = ctx.project([("r1", R1), ("r2", R2),
                           ("r3", "op.create_table('t3', sa.Column('id', sa.Integer))")])
    ctx.sql("INSERT INTO alembic_version VALUES ('r2')")
    return ctx.args(project)


def relative_target_down(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "-1")


def relative_target_up(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "+1")


def relative_target_named(ctx: Ctx) -> list[str]:
    return ctx.args(ctx.project(), "r1+1")


#: (case, exit code, distinctive substring of the error line)
CASES: list[tuple[Callable[[Ctx], list[str]], int, str]] = [
    (unknown_flag, 2, "--frobnicate"),
    (lock_timeout_unit, 2, "--lock-timeout"),
    (lock_timeout_negative, 2, "--lock-timeout"),
    (lock_timeout_negative_eq, 2, "--lock-timeout"),
    (statement_timeout_abc, 2, "--statement-timeout"),
    (advisory_lock_wait_year, 2, "--advisory-lock-wait"),
    (lock_retries_negative, 2, "--lock-retries"),
    (lock_retries_words, 2, "--lock-retries"),
    (log_format_xml, 2, "xml"),
    (missing_ini, 2, "not found"),
    (ini_is_directory, 2, "alembic config"),
    (unreadable_ini, 2, "not readable"),
    (ini_without_section, 2, "[alembic]"),
    (bad_script_location, 2, "no-such-dir"),
    (malformed_url, 2, "malformed database URL"),
    (mysql_url, 2, "PostgreSQL"),
    (wrong_password, 7, "password authentication failed"),
    (unreachable_host, 7, "cannot connect"),
    (missing_database, 2, "does not exist"),
    (read_only_role, 2, "cannot write the run ledger"),  # before anything runs
    (read_only_role_no_ledger, 5, "permission denied"),
    (migration_syntax_error, 3, "SyntaxError"),
    (migration_raises, 5, "boom-in-r2"),
    (migration_raises_debug, 5, "boom-in-r2"),
    (duplicate_revision, 3, "duplicate revision"),
    (missing_down_revision, 3, "r_gone"),
    (multiple_heads, 3, "multiple heads"),
    (unknown_db_revision, 3, "r_unknown"),
    (missing_pg_dump, 2, "/nonexistent/pg_dump"),
    (old_pg_dump, 2, "older than the server"),
    (artifacts_under_file, 2, "artifacts directory"),
    (empty_versions, 2, "no migration scripts"),
    (unknown_target, 3, "r_nowhere"),
    (url_file_missing, 2, "no-such-secret"),
    (url_file_empty, 2, "is empty"),
    (env_py_raises, 2, "env-py-is-broken"),
    (plan_without_database, 2, "plan needs a database"),
    (recover_without_yes, 2, "--yes"),
    (unknown_subcommand, 2, "frobnicate"),
    (revision_cycle, 3, "cycle"),
    (lock_timeout_bare_number, 2, "'2' has no unit: add one, e.g. 2s or 2000ms"),
    (option_the_command_does_not_use, 2, "--lock-retries is not an option of"),
    (recover_embedded, 2, "nothing to recover"),
    (no_database_url, 2, "no database URL: pass --database-url URL, or set DATABASE_URL"),
    (async_url_without_asyncpg, 2, "pip install asyncpg"),
    (no_create_on_schema, 2, "run ledger"),
    (no_create_on_schema_no_ledger, 2, "permission denied"),
    (not_version_table_owner, 2, "permission denied"),
    (not_version_table_owner_ledger, 2, "permission denied"),
    (read_only_database, 2, "read-only"),
    (read_only_database_no_ledger, 2, "read-only"),
    (missing_version_schema, 2, "nope"),
    (missing_version_schema_ledger, 2, "nope"),
    (two_version_rows, 3, "r1, r2"),
    (relative_target_down, 3, "relative"),
    (relative_target_up, 3, "relative"),
    (relative_target_named, 3, "relative"),
]


def error_lines(stderr: str) -> list[str]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("safe-migrate: error:"):
            found.append(line)
        elif line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "error":
                found.append(line)
    return found


@pytest.mark.parametrize(("case", "code", "needle"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input(case, code, needle, tmp_path, db, sql, make_project, monkeypatch, request,
                   capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL_FILE", raising=False)
    ctx = Ctx(tmp_path, db, sql, make_project, monkeypatch, request)
    # The database already has a history: r1 applied.
    base = make_project([("r1", R1)])
    assert run_main(ctx, ctx.args(base, "--no-schema-diff",
                                  "--artifacts-dir", str(tmp_path / "setup"))) == 0
    argv = case(ctx)
    before = snapshot(sql)
    capsys.readouterr()

    result = run_main(ctx, argv)

    out, err = capsys.readouterr()
    assert result == code, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    record = json.loads(lines[0])
    assert record["exit_code"] == code
    if "--debug" in argv:
        assert "Traceback" in err
    else:
        assert "Traceback" not in err and "Traceback" not in out
    assert snapshot(sql) == before
