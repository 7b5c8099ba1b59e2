"""Partial applies: detected at run time (exit 6), planned, recovered by executing the plan,
and then upgraded to head. Real PostgreSQL throughout."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import (
    FAIL_SWITCH,
    advisory_locks,
    cli_args,
    open_transaction,
    run_dir,
    spawn,
    tables_of,
    version_of,
)

from runner.urls import SQLALCHEMY_2


def plan_of(directory: Path) -> dict:
    return json.loads((run_dir(directory) / "recovery-plan.json").read_text())


def recover_and_upgrade(project, db, sql, run_cli, tmp_path, artifacts: Path) -> None:
    """What the person on call does: recover --execute, then upgrade again (migration fixed)."""
    assert run_cli(cli_args(project, db, "--yes", "--execute", command="recover",
                            artifacts=artifacts)) == 0
    assert sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid")[0][0] == 0
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "after")) == 0


def test_cic_cancelled_by_lock_timeout_leaves_invalid_index(make_project, db, sql, run_cli,
                                                            tmp_path):
    project = make_project([
        ("r1", "op.create_table('items', sa.Column('id', sa.Integer), sa.Column('name', sa.Text))"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_index('ix_items_name', 'items', ['name'], "
               "postgresql_concurrently=True)"),
    ])
    assert run_cli(cli_args(project, db, "r1", artifacts=tmp_path / "a0")) == 0
    art = tmp_path / "a1"
    # An open transaction that wrote to the table: CIC must wait for it, and times out.
    with open_transaction(db, "INSERT INTO items VALUES (1, 'x')", hold=30), \
            capture_logs() as logs:
        code = run_cli(cli_args(project, db, "--lock-timeout", "300ms", "--lock-retries", "3",
                                artifacts=art))
    assert code == 6
    assert not [e for e in logs if e["event"] == "migration.retry"]  # never retried blindly
    plan = plan_of(art)
    assert plan["status"] == "partial-apply"
    assert (plan["failed_revision"], plan["stamp_target"]) == ("r2", "r1")
    assert [(o["kind"], o["name"]) for o in plan["leftover_objects"]] == [
        ("invalid_index", "ix_items_name")]
    assert plan["rollback_sql"] == ['DROP INDEX CONCURRENTLY IF EXISTS "public"."ix_items_name";']
    assert any("recover" in c and "--execute" in c for c in plan["commands"])
    assert "Running downgrade r2 -> r1" in (plan["downgrade_sql_template"] or "")
    assert "partial-apply" in (run_dir(art) / "recovery-plan.md").read_text()
    recover_and_upgrade(project, db, sql, run_cli, tmp_path, art)
    assert version_of(sql) == ["r2"]
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_items_name'::regclass") == [
        (True,)]


def test_enum_add_value_in_autocommit_block_then_error(make_project, db, sql, run_cli, tmp_path,
                                                       monkeypatch):
    project = make_project([
        ("r1", "op.execute(\"CREATE TYPE mood AS ENUM ('ok')\")"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.execute(\"ALTER TYPE mood ADD VALUE IF NOT EXISTS 'sad'\")\n" + FAIL_SWITCH),
    ])
    monkeypatch.setenv("SM_FAIL", "1")
    art = tmp_path / "a"
    assert run_cli(cli_args(project, db, artifacts=art)) == 6
    plan = plan_of(art)
    assert plan["status"] == "partial-apply" and plan["stamp_target"] == "r1"
    assert [(o["kind"], o["name"]) for o in plan["leftover_objects"]] == [("enum_value", "'sad'")]
    assert all(s.startswith("--") for s in plan["rollback_sql"])  # PostgreSQL cannot drop it
    assert version_of(sql) == ["r1"]
    monkeypatch.delenv("SM_FAIL")
    recover_and_upgrade(project, db, sql, run_cli, tmp_path, art)
    assert version_of(sql) == ["r2"]
    assert sql("SELECT enum_range(NULL::mood)::text") == [("{ok,sad}",)]


def test_raw_commit_mid_migration_then_error(make_project, db, sql, run_cli, tmp_path,
                                             monkeypatch):
    project = make_project([
        ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
        ("r2", "op.create_table('half', sa.Column('id', sa.Integer))\n"
               "op.execute('COMMIT')\n"
               "op.add_column('base_t', sa.Column('extra', sa.Text))\n" + FAIL_SWITCH),
    ])
    monkeypatch.setenv("SM_FAIL", "1")
    art = tmp_path / "a"
    assert run_cli(cli_args(project, db, artifacts=art)) == 6
    plan = plan_of(art)
    assert plan["status"] == "partial-apply" and plan["stamp_target"] == "r1"
    # The ALTER after the raw COMMIT ran in a transaction of its own that the failure rolled
    # back, except under SQLAlchemy 1.4 with psycopg2, where it committed: the plan lists
    # what the database holds, either way.
    extra = sql("SELECT count(*) FROM information_schema.columns "
                "WHERE column_name = 'extra'") == [(1,)]
    assert extra is not SQLALCHEMY_2
    assert {(o["kind"], o["name"]) for o in plan["leftover_objects"]} == {
        ("table", "half"), *([("column", "extra")] if extra else [])}
    assert tables_of(sql) == {"base_t", "half"}  # committed before the error
    monkeypatch.delenv("SM_FAIL")
    recover_and_upgrade(project, db, sql, run_cli, tmp_path, art)
    assert version_of(sql) == ["r2"] and tables_of(sql) == {"base_t", "half"}
    assert sql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'extra'") == [
        (1,)]


def test_sigkill_during_non_transactional_migration(make_project, db, sql, run_cli, tmp_path):
    project = make_project([
        ("r1", "op.create_table('keep', sa.Column('id', sa.Integer))"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_table('left_behind', sa.Column('id', sa.Integer))\n"
               "    if os.environ.get('SM_SLEEP'):\n"
               "        op.execute('SELECT pg_sleep(2)')"),
    ])
    art = tmp_path / "a"
    proc = spawn(cli_args(project, db, artifacts=art), env={"SM_SLEEP": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if '"migration.start"' in line and '"r2"' in line:
            break
    time.sleep(0.7)  # inside the autocommit block, after CREATE TABLE committed
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # The orphaned backend finishes its pg_sleep, then notices its client is gone.
    for _ in range(100):
        if not sql("SELECT 1 FROM pg_stat_activity WHERE application_name = "
                   "'safe-migrate-migration' AND datname = current_database()"):
            break
        time.sleep(0.1)
    assert "left_behind" in tables_of(sql) and version_of(sql) == ["r1"]
    assert advisory_locks(sql) == 0  # the session lock died with the runner
    assert run_cli(cli_args(project, db, "--format", "json", command="status",
                            artifacts=art)) == 0
    assert run_cli(cli_args(project, db, "--yes", "--execute", command="recover",
                            artifacts=art)) == 0
    assert "left_behind" not in tables_of(sql)
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "after")) == 0
    assert version_of(sql) == ["r2"] and tables_of(sql) == {"keep", "left_behind"}


def test_status_reports_the_killed_run(make_project, db, sql, run_cli, tmp_path, capsys):
    project = make_project([("r1", "op.create_table('keep', sa.Column('id', sa.Integer))"),
                            ("r2", "op.execute('SELECT pg_sleep(30)')")])
    art = tmp_path / "a"
    proc = spawn(cli_args(project, db, artifacts=art))
    while True:
        line = proc.stderr.readline()
        if ('"migration.start"' in line and '"r2"' in line) or not line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    capsys.readouterr()
    with capture_logs() as logs:  # events captured, so stdout holds only the report
        assert run_cli(cli_args(project, db, "--format", "json", command="status",
                                artifacts=art)) == 0
    report = json.loads(capsys.readouterr().out)
    assert [e for e in logs if e["event"] == "status"]
    assert report["current"] == ["r1"] and report["pending"] == ["r2"]
    assert report["last_run"]["outcome"] == "running"
    assert report["last_run"]["running_revision"] == "r2"  # the journal names the killed step
    assert report["lock_holders"] == []


def test_recover_without_yes_is_refused_non_interactively(make_project, db, run_cli, tmp_path,
                                                         monkeypatch):
    project = make_project([
        ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
        ("r2", "op.create_table('half', sa.Column('id', sa.Integer))\n"
               "op.execute('COMMIT')\n" + FAIL_SWITCH)])
    monkeypatch.setenv("SM_FAIL", "1")
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 6
    monkeypatch.setattr("sys.stdin", io.StringIO())  # not a terminal
    assert run_cli(cli_args(project, db, "--execute", command="recover",
                            artifacts=tmp_path / "a")) == 2


def test_missing_pg_dump_exit_2_database_untouched(make_project, db, sql, tmp_path):
    from runner.main import main

    project = make_project([("r1", "op.create_table('t', sa.Column('id', sa.Integer))")])
    code = main([*cli_args(project, db, artifacts=tmp_path / "a"), "--pg-dump",
                 str(tmp_path / "no-pg_dump")], configure_logging=False)
    assert code == 2
    assert version_of(sql) == [] and tables_of(sql) == set()


def test_too_old_pg_dump_exit_2_database_untouched(make_project, db, sql, tmp_path, server):
    from runner.main import main

    old = Path("/usr/lib/postgresql/15/bin/pg_dump")
    if server.embedded is None or not old.exists():
        pytest.skip("needs the embedded PostgreSQL 18 server and a pg_dump 15")
    project = make_project([("r1", "op.create_table('t', sa.Column('id', sa.Integer))")])
    code = main([*cli_args(project, db, artifacts=tmp_path / "a"), "--pg-dump", str(old)],
                configure_logging=False)
    assert code == 2
    assert version_of(sql) == [] and tables_of(sql) == set()


def test_recover_after_a_clean_failure_keeps_what_the_run_applied(make_project, db, sql, run_cli,
                                                                 tmp_path, capsys):
    """r1 and r2 commit, r3 fails and rolls back: nothing is left over, and recover must not
    mistake r1/r2's tables (absent from schema-before.sql) for leftovers."""
    project = make_project([
        ("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
        ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))"),
        ("r3", "op.create_table('t3', sa.Column('id', sa.Integer))\n" + FAIL_SWITCH)])
    art = tmp_path / "a"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SM_FAIL", "1")
        assert run_cli(cli_args(project, db, artifacts=art)) == 5
    capsys.readouterr()
    assert run_cli(cli_args(project, db, "--format", "json", command="recover",
                            artifacts=art)) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["status"] == "clean-rollback" and plan["leftover_objects"] == []
    assert plan["failed_revision"] == "r3" and plan["stamp_target"] == "r2"
    assert run_cli(cli_args(project, db, "--yes", "--execute", command="recover",
                            artifacts=art)) == 0
    assert tables_of(sql) == {"t1", "t2"} and version_of(sql) == ["r2"]


def test_recover_trusts_the_version_table_over_a_stale_journal(make_project, db, sql, run_cli,
                                                              tmp_path, capsys):
    """A runner killed right after a non-transactional migration committed, before the journal
    moved on: run.json still says `running`, the version table says applied. Nothing may be
    rolled back."""
    project = make_project([
        ("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_index('ix_t1', 't1', ['id'], postgresql_concurrently=True)")])
    art = tmp_path / "a"
    assert run_cli(cli_args(project, db, artifacts=art)) == 0
    run_file = run_dir(art) / "run.json"
    run = json.loads(run_file.read_text())
    run.update(outcome="running", exit_code=None, running_revision="r2")
    run["migrations"][-1]["outcome"] = "running"  # the journal as the kill left it
    run_file.write_text(json.dumps(run))
    capsys.readouterr()
    assert run_cli(cli_args(project, db, command="recover", artifacts=art)) == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert run_cli(cli_args(project, db, "--yes", "--execute", command="recover",
                            artifacts=art)) == 0
    assert sql("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_t1'") == [(1,)]
