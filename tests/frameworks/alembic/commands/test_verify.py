"""`safe-migrate verify`: the stairway (upgrade, downgrade, re-upgrade) on a scratch database."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import (
    ADD_NICK,
    CREATE_ACCOUNTS,
    INDEX_EMAIL,
    ON_THE_USERS_DRIVER,
    RAN_ON,
    MakeProject,
    Server,
    chained,
    libpq,
)

from runner.main import main

BROKEN_DOWN = '''
def upgrade():
    op.create_table("notes", sa.Column("id", sa.BigInteger, primary_key=True))


def downgrade():
    op.drop_table("no_such_table")
'''


def _steps(logs: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    return [(e["revision"], e["direction"], e["ok"]) for e in logs if e["event"] == "verify.step"]


def _databases(server: Server) -> list[str]:
    with psycopg.connect(libpq(server.url), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]


def test_verify_healthy_history_on_embedded(tmp_path: Path, make_project: MakeProject,
                                            logs: list[dict[str, Any]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    revisions = [("r1", CREATE_ACCOUNTS), ("r2", ADD_NICK), ("r3", INDEX_EMAIL)]
    ini = make_project([]).add_modules(chained(revisions)).ini
    schema_dir, heads = tmp_path / "schemas", tmp_path / "heads.sql"
    code = main(["verify", "-c", str(ini), "--schema-dir", str(schema_dir),
                 "--write-schema", str(heads)], configure_logging=False)
    assert code == 0
    assert _steps(logs) == [(rev, d, True) for rev in ("r1", "r2", "r3")
                            for d in ("upgrade", "downgrade", "re-upgrade")]
    assert all(isinstance(e["duration_ms"], int) for e in logs if e["event"] == "verify.step")
    assert sorted(p.name for p in schema_dir.iterdir()) == [
        "base.sql", "r1.sql", "r2.sql", "r3.sql"]
    assert "nick" not in (schema_dir / "r1.sql").read_text()
    assert "nick text" in (schema_dir / "r2.sql").read_text()
    assert heads.read_text() == (schema_dir / "r3.sql").read_text()
    assert "alembic_version" not in heads.read_text()
    assert "0 failed" in capsys.readouterr().out


def test_verify_reports_the_failing_downgrade_and_goes_on(
        make_project: MakeProject, server: Server, logs: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    history = chained([("r1", CREATE_ACCOUNTS), ("r2", BROKEN_DOWN), ("r3", ADD_NICK)])
    ini = make_project([]).add_modules(history).ini
    before = set(_databases(server))
    code = main(["verify", "-c", str(ini), "--database-url",
                 server.url.render_as_string(hide_password=False)], configure_logging=False)
    assert code == 3
    failed = [e for e in logs if e["event"] == "verify.failed"]
    assert [(e["revision"], e["direction"]) for e in failed] == [("r2", "downgrade")]
    assert "no_such_table" in failed[0]["error"] and "\n" not in failed[0]["error"]
    steps = _steps(logs)
    assert ("r2", "downgrade", False) in steps
    # rebuilt at r2, then r3 is still proven
    assert ("r2", "rebuild", True) in steps
    assert [s for s in steps if s[0] == "r3"] == [
        ("r3", "upgrade", True), ("r3", "downgrade", True), ("r3", "re-upgrade", True)]
    out = capsys.readouterr()
    assert "FAILED r2 downgrade" in out.out
    assert "r2 downgrade" in out.err
    # the temporary database is gone again
    assert set(_databases(server)) == before


def test_verify_optuna_migrations(logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    optuna = pytest.importorskip("optuna")
    rdb = Path(optuna.__file__).parent / "storages" / "_rdb"
    monkeypatch.chdir(rdb)  # its alembic.ini says script_location = alembic (relative)
    code = main(["verify", "-c", "alembic.ini"], configure_logging=False)
    assert code == 3
    failed = {(e["revision"], e["direction"]) for e in logs if e["event"] == "verify.failed"}
    assert ("v3.0.0.c", "downgrade") in failed
    assert "FAILED v3.0.0.c downgrade" in capsys.readouterr().out


# An env.py that builds its engine from an environment variable, ignoring sqlalchemy.url.
ENV_FROM_VARIABLE = '''
import os
import textwrap
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["{variable}"]
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
'''


def _live_database(db: Any, sql: Any) -> list[Any]:
    """A database with data that the stairway's downgrades would destroy."""
    sql("CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL)")
    sql("INSERT INTO accounts VALUES (1, 'a@example.com')")
    return sql("SELECT * FROM accounts")


def test_verify_refuses_an_env_py_that_would_connect_elsewhere(
        make_project: MakeProject, server: Server, db: Any, sql: Any,
        monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]) -> None:
    rows = _live_database(db, sql)
    project = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", ADD_NICK)]))
    (project.root / "env.py").write_text(ENV_FROM_VARIABLE.format(variable="LIVE_DB_URL"))
    monkeypatch.setenv("LIVE_DB_URL", db.render_as_string(hide_password=False))
    code = main(["verify", "-c", str(project.ini), "--database-url",
                 server.url.render_as_string(hide_password=False)], configure_logging=False)
    assert code == 2
    assert not [e for e in logs if e["event"] == "verify.step"]  # not one step ran
    assert sql("SELECT * FROM accounts") == rows
    assert sql("SELECT to_regclass('alembic_version')") == [(None,)]


def test_verify_points_an_env_py_reading_database_url_at_the_scratch_database(
        make_project: MakeProject, db: Any, sql: Any, monkeypatch: pytest.MonkeyPatch,
        logs: list[dict[str, Any]]) -> None:
    """For verify, DATABASE_URL names the server for the scratch database; an env.py that
    reads it must not migrate the database it names."""
    rows = _live_database(db, sql)
    project = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", ADD_NICK)]))
    (project.root / "env.py").write_text(ENV_FROM_VARIABLE.format(variable="DATABASE_URL"))
    url = db.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["verify", "-c", str(project.ini)], configure_logging=False) == 0
    assert _steps(logs) == [(rev, d, True) for rev in ("r1", "r2")
                            for d in ("upgrade", "downgrade", "re-upgrade")]
    assert sql("SELECT * FROM accounts") == rows
    assert sql("SELECT to_regclass('alembic_version')") == [(None,)]
    assert os.environ["DATABASE_URL"] == url  # restored


@pytest.mark.parametrize(("driver", "style"), [("psycopg2", "generic"), ("asyncpg", "async")])
def test_verify_runs_the_history_on_the_driver_the_url_names(
        driver: str, style: str, make_project: MakeProject, server: Server,
        logs: list[dict[str, Any]]) -> None:
    """The scratch database is handed to env.py with --database-url's driver, as upgrade
    does: a history that only runs on that driver verifies."""
    project = make_project([], env_style=style)
    project.add_modules(chained([
        ("r1", "\ndef upgrade():\n" + textwrap.indent(
            ON_THE_USERS_DRIVER[driver] + "\n" + RAN_ON, "    ")
         + "\n\n\ndef downgrade():\n    op.execute('DROP TABLE IF EXISTS nums')\n"
         + f"    op.execute('DROP TABLE ran_on_{driver}')\n"),
        ("r2", ADD_NICK.replace('"accounts"', '"ran_on_' + driver + '"'))]))
    url = server.url.set(drivername=f"postgresql+{driver}").render_as_string(
        hide_password=False)
    code = main(["verify", "-c", str(project.ini), "--database-url", url],
                configure_logging=False)
    assert code == 0, [e for e in logs if e["event"] == "verify.step" and not e["ok"]]
    assert all(ok for _, _, ok in _steps(logs)) and len(_steps(logs)) == 6
