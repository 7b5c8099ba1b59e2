"""`safe-migrate plan`: preflight, pending revisions, offline SQL, transactional flags, lint."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL
from support import ADD_NICK, CREATE_ACCOUNTS, READS_ROWS, MakeProject, chained

from runner.main import main

CONCURRENT = '''
def upgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_accounts_email", "accounts", ["email"],
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade():
    op.drop_index("ix_accounts_email", table_name="accounts")
'''
INDEX = '''
def upgrade():
    op.create_index("ix_accounts_nick", "accounts", ["nick"])


def downgrade():
    op.drop_index("ix_accounts_nick", table_name="accounts")
'''


LINEAR = [("r1", None, CREATE_ACCOUNTS), ("r2", "r1", CONCURRENT), ("r3", "r2", ADD_NICK)]


def _plan_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = main(["plan", "--format", "json", *argv], configure_logging=False)
    return code, json.loads(capsys.readouterr().out)


def test_plan_from_base_needs_no_database(make_project: MakeProject, logs: list[dict[str, Any]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "base"])
    assert code == 0
    assert doc["preflight"] == {"ok": True, "error": None} and doc["allowed"] is True
    assert doc["current"] == []
    revs = {p["revision"]: p for p in doc["pending"]}
    assert [p["revision"] for p in doc["pending"]] == ["r1", "r2", "r3"]
    assert revs["r1"]["transactional"] and revs["r3"]["transactional"]
    assert not revs["r2"]["transactional"]
    assert "autocommit_block()" in revs["r2"]["non_transactional_reasons"]
    for p in doc["pending"]:  # one transaction per revision, as upgrade runs it
        assert p["sql"].startswith("BEGIN;") and p["sql"].rstrip().endswith("COMMIT;")
        assert p["path"].endswith(f"/{p['revision']}.py")
    assert "CREATE TABLE accounts" in revs["r1"]["sql"]
    assert "CREATE UNIQUE INDEX CONCURRENTLY" not in revs["r2"]["sql"]
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_accounts_email" in revs["r2"]["sql"]
    # The autocommit block leaves the transaction: COMMIT; ... BEGIN; inside the revision.
    assert revs["r2"]["sql"].count("COMMIT;") == 2
    assert "ALTER TABLE accounts ADD COLUMN nick" in revs["r3"]["sql"]
    assert any(e["event"] == "preflight.ok" and e["pending"] == 3 for e in logs)


def test_plan_text_output(make_project: MakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    assert main(["plan", "-c", str(ini), "--from", "r1"], configure_logging=False) == 0
    out = capsys.readouterr().out
    assert "preflight: ok" in out and "pending: 2 revision(s)" in out
    assert "== r2" in out and "NOT transactional" in out and "upgrade would start" in out
    assert "== r1" not in out


def test_plan_reads_the_database(make_project: MakeProject, db: URL,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    url = db.render_as_string(hide_password=False)
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "r1")
    code, doc = _plan_json(capsys, ["-c", str(ini), "--database-url", url])
    assert code == 0 and doc["current"] == ["r1"]
    assert [p["revision"] for p in doc["pending"]] == ["r2", "r3"]
    assert doc["pending"][0]["sql"].startswith("BEGIN;")
    # an explicit TARGET limits the plan
    code, doc = _plan_json(capsys, ["-c", str(ini), "--database-url", url, "r2"])
    assert code == 0 and [p["revision"] for p in doc["pending"]] == ["r2"]


def test_plan_reads_the_version_table_env_py_names(make_project: MakeProject, db: URL,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An env.py with its own version_table: plan must look there, as upgrade does."""
    project = make_project([]).add_modules(LINEAR)
    env = project.root / "env.py"
    env.write_text(env.read_text().replace(
        "connection=connection, target_metadata=target_metadata",
        "connection=connection, target_metadata=target_metadata, version_table='svc_version'"))
    assert "svc_version" in env.read_text()
    url = db.render_as_string(hide_password=False)
    config = Config(str(project.ini))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "r1")  # through that env.py: r1 lands in svc_version
    code, doc = _plan_json(capsys, ["-c", str(project.ini), "--database-url", url])
    assert code == 0 and doc["current"] == ["r1"]
    assert [p["revision"] for p in doc["pending"]] == ["r2", "r3"]


# env.py for two version tables in one database, as alembic's multidb template runs two
# engines: upgrade would refuse it (one lock per run), so plan does too.
TWO_VERSION_TABLES = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

engine = engine_from_config(context.config.get_section(context.config.config_ini_section),
                            prefix="sqlalchemy.", poolclass=pool.NullPool)
for table in ("first_version", "second_version"):
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, version_table=table)
        with context.begin_transaction():
            context.run_migrations()
'''


def test_plan_refuses_an_env_py_with_two_version_tables(
        make_project: MakeProject, db: URL, sql: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project([]).add_modules(LINEAR)
    (project.root / "env.py").write_text(TWO_VERSION_TABLES)
    url = db.render_as_string(hide_password=False)
    code = main(["plan", "-c", str(project.ini), "--database-url", url, "--log-format", "json"],
                configure_logging=False)
    assert code == 2
    assert "public.second_version" in capsys.readouterr().err


def test_plan_unknown_database_revision_is_refused(make_project: MakeProject, db: URL,
                                                   sql: Callable[..., Any],
                                                   logs: list[dict[str, Any]],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    url = db.render_as_string(hide_password=False)
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url)
    command.stamp(config, "r1")
    sql("UPDATE alembic_version SET version_num = 'gone'")
    code, doc = _plan_json(capsys, ["-c", str(ini), "--database-url", url])
    assert code == 3 and doc["preflight"]["ok"] is False
    assert "gone" in doc["preflight"]["error"]
    assert any(e["event"] == "preflight.failed" for e in logs)


def test_plan_multiple_heads_refused_without_database(make_project: MakeProject,
                                                      logs: list[dict[str, Any]],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    branches = [("r1", None, CREATE_ACCOUNTS), ("a2", "r1", ADD_NICK), ("b2", "r1", INDEX)]
    ini = make_project([]).add_modules(branches).ini
    code = main(["plan", "-c", str(ini), "--from", "heads"], configure_logging=False)
    assert code == 3
    out = capsys.readouterr()
    assert "multiple heads" in out.out + out.err and "alembic -c" in out.out
    failed = [e for e in logs if e["event"] == "preflight.failed"]
    assert failed and "merge" in failed[0]["reason"]


def test_plan_single_head_pre_commit_check(make_project: MakeProject,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    assert main(["plan", "-c", str(ini), "--from", "heads"], configure_logging=False) == 0
    assert "pending: 0 revision(s)" in capsys.readouterr().out


def test_plan_lint_modes(make_project: MakeProject, logs: list[dict[str, Any]],
                        capsys: pytest.CaptureFixture[str]) -> None:
    revisions = [("r1", CREATE_ACCOUNTS), ("r2", ADD_NICK), ("r3", INDEX)]
    ini = make_project([]).add_modules(chained(revisions)).ini
    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "r1"])
    assert code == 0 and doc["allowed"] is True
    r3 = doc["pending"][1]
    assert [f["rule"] for f in r3["findings"]] == ["require-concurrent-index-creation"]
    assert r3["findings"][0]["path"].endswith("/r3.py")
    assert any(e["event"] == "lint.finding" and e["log_level"] == "warning"
               and e["revision"] == "r3" for e in logs)

    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "r1", "--lint", "error"])
    assert code == 3 and doc["allowed"] is False

    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "r1", "--lint", "off"])
    assert code == 0 and doc["lint"]["findings"] == 0


@pytest.mark.parametrize(("mode", "expected"), [("warn", 0), ("error", 2)])
@pytest.mark.usefixtures("no_squawk")
def test_plan_without_squawk_answers_as_upgrade_would(
        mode: str, expected: int, make_project: MakeProject, logs: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """plan exits 0 when upgrade would start: upgrade only warns without squawk in warn mode."""
    ini = make_project([]).add_modules(LINEAR).ini
    code = main(["plan", "--format", "json", "-c", str(ini), "--from", "base", "--lint", mode],
                configure_logging=False)
    out = capsys.readouterr().out
    assert code == expected
    unavailable = [e for e in logs if e["event"] == "lint.unavailable"]
    if mode == "warn":
        doc = json.loads(out)
        assert doc["allowed"] is True and "squawk not found" in doc["lint"]["unavailable"]
        assert len(unavailable) == 1
        assert main(["plan", "-c", str(ini), "--from", "base"], configure_logging=False) == 0
        assert "lint (warn): not run: squawk not found" in capsys.readouterr().out
    else:
        assert not unavailable


def test_plan_unknown_target(make_project: MakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(LINEAR).ini
    assert main(["plan", "-c", str(ini), "--from", "base", "nope"], configure_logging=False) == 3


NOISY = '''
def upgrade():
    print("backfilling accounts...")
    op.add_column("accounts", sa.Column("nick", sa.Text))


def downgrade():
    op.drop_column("accounts", "nick")
'''


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_print_in_a_migration_never_reaches_stdout(
        fmt: str, make_project: MakeProject, logs: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", NOISY)])).ini
    code = main(["plan", "--format", fmt, "-c", str(ini), "--from", "base"],
                configure_logging=False)
    out = capsys.readouterr().out
    assert code == 0 and "backfilling" not in out
    if fmt == "json":
        assert [p["revision"] for p in json.loads(out)["pending"]] == ["r1", "r2"]
    assert [(e["revision"], e["output"]) for e in logs if e["event"] == "offline.output"] == [
        ("r2", "backfilling accounts...")]


def test_plan_lint_error_refuses_an_unrenderable_revision(
        make_project: MakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", READS_ROWS), ("r3", ADD_NICK)])).ini
    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "base", "--lint", "error"])
    assert code == 3 and doc["allowed"] is False
    r1, r2, r3 = doc["pending"]
    assert r1["sql"] and r3["sql"]  # the others still have their SQL
    assert r2["sql"] is None and "AttributeError" in r2["sql_error"]
    assert [(f["rule"], f["level"]) for f in r2["findings"]] == [("unrenderable", "error")]

    code, doc = _plan_json(capsys, ["-c", str(ini), "--from", "base", "--lint", "warn"])
    assert code == 0 and doc["lint"]["findings"] == 1


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_password_in_a_migrations_sql_is_masked_in_the_plan(
        fmt: str, make_project: MakeProject, capsys: pytest.CaptureFixture[str]) -> None:
    role = '''
def upgrade():
    op.execute("CREATE ROLE reporting LOGIN PASSWORD 'Secret9'")


def downgrade():
    op.execute("DROP ROLE reporting")
'''
    ini = make_project([]).add_modules(chained([("r1", role)])).ini
    code = main(["plan", "--format", fmt, "-c", str(ini), "--from", "base", "--lint", "off"],
                configure_logging=False)
    out = capsys.readouterr().out
    assert code == 0 and "Secret9" not in out
    assert "CREATE ROLE reporting LOGIN PASSWORD '***'" in out
