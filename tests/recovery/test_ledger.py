"""Recovery that never loses data: the run ledger in the database, and `recover` that undoes
only what the failed run recorded. Every scenario on a real PostgreSQL; each failed on the
code before the ledger (recover diffed the live schema against the last local artifacts)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest
from support import (
    FAIL_SWITCH,
    cli_args,
    libpq,
    open_transaction,
    run_dir,
    spawn,
    tables_of,
    version_of,
)

from runner.db.lock import lock_key
from runner.embedded import bin_dir

# r2 commits a table of its own (autocommit block), then fails: a partial apply.
PARTIAL = [
    ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
    ("r2", "with op.get_context().autocommit_block():\n"
           "    op.create_table('half', sa.Column('id', sa.Integer))\n" + FAIL_SWITCH),
]


@pytest.fixture
def failing(monkeypatch):
    monkeypatch.setenv("SM_FAIL", "1")
    return monkeypatch


def ledger_rows(sql, table: str = "public.safe_migrate_runs") -> list[dict]:
    rows = sql(f"SELECT row_to_json(r) FROM {table} r ORDER BY started_at")
    return [row[0] for row in rows]


def kill_during(project, db, sql, artifacts: Path, query: str, *extra: str) -> None:
    """SIGKILL the runner while its migration session runs `query` (the pod is evicted)."""
    proc = spawn(cli_args(project, db, *extra, artifacts=artifacts))
    deadline = time.monotonic() + 30
    while not sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE %s", (query + "%",)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


# r2 sleeps inside its autocommit block, after creating a table: a run killed there.
KILLED = [
    ("r1", "op.create_table('keep', sa.Column('id', sa.Integer))"),
    ("r2", "with op.get_context().autocommit_block():\n"
           "    op.create_table('left_behind', sa.Column('id', sa.Integer))\n"
           "    op.execute('SELECT pg_sleep(2)')"),
]


def wait_for_orphan(sql) -> None:
    """The killed runner's backend ends its pg_sleep, then sees its client gone."""
    for _ in range(100):
        if not sql("SELECT 1 FROM pg_stat_activity WHERE application_name = "
                   "'safe-migrate-migration' AND datname = current_database()"):
            return
        time.sleep(0.1)


def partial_apply(project, db, run_cli, tmp_path, *extra: str) -> Path:
    art = tmp_path / "failed"
    assert run_cli(cli_args(project, db, *extra, artifacts=art)) == 6
    return art


def recover(run_cli, project, db, artifacts: Path, *extra: str) -> int:
    return run_cli(cli_args(project, db, *extra, command="recover", artifacts=artifacts))


def test_the_ledger_records_each_run_in_the_database(make_project, db, sql, run_cli, tmp_path,
                                                     failing):
    project = make_project(PARTIAL)
    partial_apply(project, db, run_cli, tmp_path)
    [row] = ledger_rows(sql)
    assert (row["command"], row["outcome"], row["exit_code"]) == ("upgrade", "partial-apply", 6)
    assert row["database_name"] == db.database and row["system_identifier"]
    assert row["version_table"] == "public.alembic_version" and row["heads_after"] == ["r1"]
    assert "@" in row["host"] and row["tool_version"] and row["ended_at"]
    assert [(s["revision"], s["transactional"], s["outcome"], s["committed_part"])
            for s in row["steps"]] == [("r1", True, "applied", False), ("r2", False, "partial",
                                                                        True)]
    recovery = row["recovery"]
    assert recovery["status"] == "partial-apply" and recovery["failed_revision"] == "r2"
    assert [(o["kind"], o["name"]) for o in recovery["leftovers"]] == [("table", "half")]
    assert all(o["definition"] for o in recovery["leftovers"])  # hashed at failure time
    assert row["resolved_at"] is None


def test_objects_created_after_the_failure_survive_recover(make_project, db, sql, run_cli,
                                                           tmp_path, failing):
    """Scenario 1: the application and a DBA changed the database after the partial apply."""
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    sql("CREATE TABLE customers (id int)")
    sql("INSERT INTO customers SELECT generate_series(1, 50)")
    sql("CREATE INDEX ix_base_t_id ON base_t (id)")
    sql("CREATE TABLE other_service_version (version_num text)")
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 0
    assert tables_of(sql) == {"base_t", "customers", "other_service_version"}
    assert sql("SELECT count(*) FROM customers") == [(50,)]
    assert sql("SELECT to_regclass('ix_base_t_id') IS NOT NULL") == [(True,)]
    assert version_of(sql) == ["r1"]
    [row] = ledger_rows(sql)
    assert row["resolution"] == "recovered" and row["resolved_at"] and row["resolved_by"]


def test_objects_created_while_the_step_ran_are_reported_not_dropped(make_project, db, sql,
                                                                     run_cli, tmp_path, capsys):
    """Another session creates a table while the failing step runs: it is new since the
    pre-step record, but the revision's code does not name it."""
    project = make_project([
        ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_table('half', sa.Column('id', sa.Integer))\n"
               "    op.execute('SELECT pg_sleep(1.5)')\n"
               "raise RuntimeError('failing on purpose')"),
    ])
    proc = spawn(cli_args(project, db, artifacts=tmp_path / "a"))
    deadline = time.monotonic() + 30
    while not sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(1.5)%%' "
                  "AND application_name = 'safe-migrate-migration'"):
        assert time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    sql("CREATE TABLE app_made (id int)")
    assert proc.wait(60) == 6
    capsys.readouterr()
    assert recover(run_cli, project, db, tmp_path / "a", "--format", "json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in plan["leftover_objects"]] == ["half"]
    assert [o["name"] for o in plan["unattributed_objects"]] == ["app_made"]
    assert recover(run_cli, project, db, tmp_path / "a", "--execute", "--yes") == 0
    assert tables_of(sql) == {"base_t", "app_made"}


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "artifacts"])
def test_an_upgrade_that_ran_while_recover_waited_is_not_undone(ledger, make_project, db, sql,
                                                               run_cli, tmp_path, failing):
    """Scenario 2: recover waits for the lock; meanwhile the database moves on. Under the lock
    it reads everything again and refuses (exit 3) without changing anything."""
    project = make_project(PARTIAL)
    extra = () if ledger else ("--no-ledger",)
    art = partial_apply(project, db, run_cli, tmp_path, *extra)
    key = lock_key(db.database, "public", "alembic_version")
    with psycopg.connect(libpq(db), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        proc = spawn(cli_args(project, db, "--execute", "--yes", *extra,
                              command="recover", artifacts=art))
        deadline = time.monotonic() + 30
        while '"lock.waiting"' not in (line := proc.stderr.readline()):
            assert line and time.monotonic() < deadline, "recover never waited for the lock"
        # What a fixed upgrade does while it holds the lock: r2 applied, its table in use.
        holder.execute("UPDATE alembic_version SET version_num = 'r2'")
        holder.execute("INSERT INTO half VALUES (1)")
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        assert proc.wait(60) == 3
    assert "moved since" in proc.stderr.read()
    assert version_of(sql) == ["r2"] and sql("SELECT count(*) FROM half") == [(1,)]


def test_a_leftover_changed_since_the_failure_is_reported_not_dropped(make_project, db, sql,
                                                                     run_cli, tmp_path,
                                                                     failing):
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    sql("INSERT INTO half VALUES (7)")  # someone wrote into the leftover table
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 3
    assert sql("SELECT * FROM half") == [(7,)] and version_of(sql) == ["r1"]
    assert ledger_rows(sql)[0]["resolved_at"] is None


def test_another_databases_artifacts_are_refused(make_project, db, server, sql, run_cli,
                                                 tmp_path, failing, capsys):
    """Scenario 3: a failed staging run's artifacts never drive recovery of production."""
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path, "--no-ledger")
    other = server.create_database()
    try:
        assert run_cli(cli_args(project, other, "r1", "--no-ledger", artifacts=tmp_path / "o")) == 0
        # The failed run's own folder, named for the other database: refused.
        assert recover(run_cli, project, other, run_dir(art), "--no-ledger") == 3
        assert run_cli(cli_args(project, other, "--no-ledger", command="status",
                                artifacts=run_dir(art))) == 3
        # The parent folder: the other database's runs are not this one's.
        capsys.readouterr()
        assert recover(run_cli, project, other, art, "--no-ledger") == 0
        assert "nothing to recover" in capsys.readouterr().out
    finally:
        server.drop_database(other)
    assert "half" in tables_of(sql)  # untouched


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "artifacts"])
def test_a_later_run_does_not_hide_the_partial_apply(ledger, make_project, db, sql, run_cli,
                                                     tmp_path, failing, capsys):
    """Scenario 4: a run that did nothing (exit 4 on a busy lock) comes after the failure."""
    project = make_project(PARTIAL)
    extra = () if ledger else ("--no-ledger",)
    art = partial_apply(project, db, run_cli, tmp_path, *extra)
    key = lock_key(db.database, "public", "alembic_version")
    with psycopg.connect(libpq(db), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        assert run_cli(cli_args(project, db, "--advisory-lock-wait", "0", *extra,
                                artifacts=art)) == 4
    capsys.readouterr()
    assert recover(run_cli, project, db, art, "--format", "json", *extra) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["status"] == "partial-apply" and plan["failed_revision"] == "r2"
    assert [o["name"] for o in plan["leftover_objects"]] == ["half"]


def test_an_unresolved_partial_apply_blocks_the_next_upgrade(make_project, db, sql, run_cli,
                                                             tmp_path, failing, logs):
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    failing.delenv("SM_FAIL")  # the migration is fixed
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "next")) == 3
    refusal = [e for e in logs if e["event"] == "preflight.failed"][-1]
    assert "safe-migrate recover" in refusal["reason"]
    assert version_of(sql) == ["r1"]
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 0
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "next")) == 0
    assert version_of(sql) == ["r2"] and "half" in tables_of(sql)


def test_mark_resolved_records_who_and_unblocks(make_project, db, sql, run_cli, tmp_path,
                                                failing):
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    sql("DROP TABLE half")  # fixed by hand
    assert recover(run_cli, project, db, art, "--mark-resolved", "--note", "dropped half") == 0
    row = ledger_rows(sql)[0]
    assert row["resolution"] == "marked-resolved: dropped half"
    assert row["resolved_by"] and row["resolved_from"] and row["resolved_at"]
    failing.delenv("SM_FAIL")
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "next")) == 0


def test_status_and_recover_work_from_another_machine(make_project, db, sql, run_cli,
                                                      tmp_path, failing, capsys):
    """The pod and its artifacts are gone: the ledger alone shows and fixes the failure."""
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    shutil.rmtree(art)
    elsewhere = tmp_path / "laptop"
    capsys.readouterr()
    assert run_cli(cli_args(project, db, "--format", "json", command="status",
                            artifacts=elsewhere)) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["outcome"], r["failed_revision"]) for r in report["unresolved"]] == [
        ("partial-apply", "r2")]
    assert report["runs_source"] == "ledger public.safe_migrate_runs"
    assert recover(run_cli, project, db, elsewhere, "--execute", "--yes") == 0
    assert "half" not in tables_of(sql) and version_of(sql) == ["r1"]


def test_a_killed_run_is_recovered_from_the_ledger_alone(make_project, db, sql, run_cli,
                                                        tmp_path):
    """SIGKILL inside an autocommit block, artifacts gone; the application then creates a
    table: recover drops what the failed revision made, and nothing else."""
    project = make_project(KILLED)
    art = tmp_path / "a"
    kill_during(project, db, sql, art, "SELECT pg_sleep(2)")
    shutil.rmtree(art)
    sql("CREATE TABLE app_made (id int)")
    wait_for_orphan(sql)
    assert recover(run_cli, project, db, tmp_path / "b", "--execute", "--yes") == 0
    assert tables_of(sql) == {"keep", "app_made"} and version_of(sql) == ["r1"]
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "c")) == 0
    assert version_of(sql) == ["r2"]


def test_recover_refuses_while_the_killed_runs_session_still_runs(make_project, db, sql,
                                                                  run_cli, tmp_path):
    project = make_project([
        ("r1", "op.create_table('keep', sa.Column('id', sa.Integer))"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_table('left_behind', sa.Column('id', sa.Integer))\n"
               "    op.execute('SELECT pg_sleep(30)')"),
    ])
    kill_during(project, db, sql, tmp_path / "a", "SELECT pg_sleep(30)")
    try:
        assert recover(run_cli, project, db, tmp_path / "b", "--execute", "--yes") == 4
        assert "left_behind" in tables_of(sql)
    finally:
        sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "application_name = 'safe-migrate-migration' AND datname = current_database()")


ENV_AUTOCOMMIT = '''
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                            prefix="sqlalchemy.", poolclass=pool.NullPool,
                            isolation_level="AUTOCOMMIT")
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''


def test_an_autocommit_env_py_partial_apply_is_never_clean(make_project, db, sql, run_cli,
                                                          tmp_path, failing):
    """Scenario 5: Dagster's env.py style; every step is non-transactional."""
    project = make_project([
        ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
        ("r2", "op.create_table('half', sa.Column('id', sa.Integer))\n" + FAIL_SWITCH),
    ])
    (project.root / "env.py").write_text(ENV_AUTOCOMMIT)
    art = partial_apply(project, db, run_cli, tmp_path, "--no-schema-diff")
    row = ledger_rows(sql)[0]
    assert row["steps"][-1]["transactional"] is False
    assert [o["name"] for o in row["recovery"]["leftovers"]] == ["half"]
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 0
    assert tables_of(sql) == {"base_t"} and version_of(sql) == ["r1"]


def test_no_schema_diff_partial_apply_still_records_its_leftovers(make_project, db, sql,
                                                                   run_cli, tmp_path, failing):
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path, "--no-schema-diff")
    plan = json.loads((run_dir(art) / "recovery-plan.json").read_text())
    assert plan["status"] == "partial-apply" and plan["leftovers_known"] is True
    assert [o["name"] for o in plan["leftover_objects"]] == ["half"]


def test_a_commit_hidden_in_a_sql_file_is_a_partial_apply_with_unknown_leftovers(
        make_project, db, sql, run_cli, tmp_path, failing):
    """No marker in the revision's code: only the statement itself shows the COMMIT."""
    project = make_project([
        ("r1", "op.create_table('base_t', sa.Column('id', sa.Integer))"),
        ("r2", "op.execute(open(os.path.join(os.path.dirname(__file__), 'r2.sql')).read())\n"
               + FAIL_SWITCH),
    ])
    (project.versions / "r2.sql").write_text("CREATE TABLE half (id int); COMMIT;")
    art = partial_apply(project, db, run_cli, tmp_path)
    plan = json.loads((run_dir(art) / "recovery-plan.json").read_text())
    assert plan["status"] == "partial-apply" and plan["leftovers_known"] is False
    assert "Unknown" in (run_dir(art) / "recovery-plan.md").read_text()
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 3  # drops nothing
    assert "half" in tables_of(sql)


def test_a_rollback_inside_a_transactional_step_is_never_exit_0(make_project, db, sql, run_cli,
                                                                 tmp_path):
    """The ROLLBACK undoes the first table, the step goes on and is stamped applied."""
    project = make_project([
        ("r0", "op.execute('SELECT 1')"),
        ("r1", "op.create_table('first', sa.Column('id', sa.Integer))\n"
               "op.execute('ROLLBACK')\n"
               "op.create_table('second', sa.Column('id', sa.Integer))"),
    ])
    art = tmp_path / "a"
    assert run_cli(cli_args(project, db, artifacts=art)) == 6
    assert tables_of(sql) == {"second"} and version_of(sql) == ["r1"]
    assert ledger_rows(sql)[0]["outcome"] == "partial-apply"


def test_set_lock_timeout_in_one_migration_leaves_the_next_bounded(make_project, db, sql,
                                                                   run_cli, tmp_path):
    """r1 sets lock_timeout = 0 on the session; r2, in the same run, must still give up
    after --lock-timeout behind a blocker (it waited for the blocker's 30 s before)."""
    sql("CREATE TABLE hot (id int)")
    project = make_project([
        ("r1", "op.execute('SET lock_timeout = 0')"),
        ("r2", "op.add_column('hot', sa.Column('extra', sa.Text))"),
    ])
    with open_transaction(db, "SELECT * FROM hot", hold=30):
        started = time.monotonic()
        code = run_cli(cli_args(project, db, "--lock-timeout", "300ms", "--lock-retries", "0",
                                artifacts=tmp_path / "a"))
        elapsed = time.monotonic() - started
    assert code == 5 and elapsed < 15
    assert version_of(sql) == ["r1"]


@pytest.mark.parametrize("target", ["r1", "base"])
def test_a_target_behind_the_database_is_refused(target, make_project, db, sql, run_cli,
                                                 tmp_path, logs):
    """Scenario 9: upgrade never downgrades (alembic does nothing then; it was exit 6)."""
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
                            ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))")])
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 0
    assert run_cli(cli_args(project, db, target, artifacts=tmp_path / "b")) == 3
    assert "never downgrades" in [e for e in logs if e["event"] == "preflight.failed"][-1][
        "reason"]
    assert version_of(sql) == ["r2"] and tables_of(sql) == {"t1", "t2"}


DUPLICATES = [
    ("r1", "op.create_table('items', sa.Column('id', sa.Integer), sa.Column('name', sa.Text))\n"
           "op.execute(\"INSERT INTO items VALUES (1, 'a'), (2, 'a')\")"),
    ("r2", "with op.get_context().autocommit_block():\n"
           "    op.execute('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix_items_name "
           "ON items (name)')"),
]


def test_a_refused_run_releases_the_lock_only_after_its_early_pg_dump(make_project, db, sql,
                                                                       run_cli, tmp_path,
                                                                       failing):
    """The before-snapshot's pg_dump starts once the lock is held; a run refused before it was
    needed (an unresolved failure, exit 3) waits for it: another runner that takes the lock
    next never has its DDL wait on that pg_dump's locks."""
    project = make_project(PARTIAL)
    partial_apply(project, db, run_cli, tmp_path)
    assert run_cli(cli_args(project, db, "--pg-dump", str(bin_dir() / "pg_dump"),
                            artifacts=tmp_path / "again")) == 3
    assert sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
               "'safe-migrate-pg_dump'") == [(0,)]


def test_a_re_run_over_an_invalid_index_is_refused(make_project, db, sql, run_cli, tmp_path,
                                                   logs):
    """The IF NOT EXISTS trap: the failed CREATE UNIQUE INDEX CONCURRENTLY left an INVALID
    index; a re-run would "succeed" over it and stamp r2 with no unique index at all."""
    project = make_project(DUPLICATES)
    art = partial_apply(project, db, run_cli, tmp_path)
    assert recover(run_cli, project, db, art, "--mark-resolved") == 0  # "fixed", wrongly
    sql("DELETE FROM items WHERE id = 2")
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "again")) == 3
    reason = [e for e in logs if e["event"] == "preflight.failed"][-1]["reason"]
    assert "ix_items_name" in reason and "INVALID" in reason
    assert version_of(sql) == ["r1"]


def test_another_tenants_invalid_index_of_the_same_name_is_no_trap(make_project, db, sql,
                                                                   run_cli, tmp_path, logs):
    """Schema per tenant: tenant a's failed run left INVALID a.ix_items_name; tenant b's run of
    the same history creates its own b.ix_items_name and is not refused (it was exit 3); a's
    re-run still is."""
    sql("CREATE SCHEMA a; CREATE SCHEMA b")
    project = make_project(DUPLICATES, env_style="tenant")
    assert run_cli(cli_args(project, db, "-x", "tenant=a", artifacts=tmp_path / "a1")) == 6
    assert recover(run_cli, project, db, tmp_path / "a1", "-x", "tenant=a",
                   "--mark-resolved") == 0
    assert run_cli(cli_args(project, db, "-x", "tenant=b", artifacts=tmp_path / "b")) == 6
    # b has the same duplicates: its own CREATE fails; with them gone, b's re-run is refused
    # only over b's own invalid index, never over a's
    sql("DELETE FROM b.items WHERE id = 2; DROP INDEX b.ix_items_name")
    assert recover(run_cli, project, db, tmp_path / "b", "-x", "tenant=b",
                   "--mark-resolved") == 0
    assert run_cli(cli_args(project, db, "-x", "tenant=b", artifacts=tmp_path / "b2")) == 0
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'b.ix_items_name'::regclass"
               ) == [(True,)]
    sql("DELETE FROM a.items WHERE id = 2")
    assert run_cli(cli_args(project, db, "-x", "tenant=a", artifacts=tmp_path / "a2")) == 3
    reason = [e for e in logs if e["event"] == "preflight.failed"][-1]["reason"]
    assert "ix_items_name" in reason and "a.items" in reason


def test_an_invalid_index_left_by_a_successful_run_is_exit_6(make_project, db, sql, run_cli,
                                                             tmp_path):
    """A migration that swallows its CREATE INDEX CONCURRENTLY failure."""
    project = make_project([
        DUPLICATES[0],
        ("r2", "with op.get_context().autocommit_block():\n"
               "    try:\n"
               "        op.execute('CREATE UNIQUE INDEX CONCURRENTLY ix_items_name "
               "ON items (name)')\n"
               "    except Exception:\n"
               "        pass"),
    ])
    art = tmp_path / "a"
    assert run_cli(cli_args(project, db, artifacts=art)) == 6
    plan = json.loads((run_dir(art) / "recovery-plan.json").read_text())
    assert plan["status"] == "verification-failed"
    assert [(o["kind"], o["name"]) for o in plan["leftover_objects"]] == [
        ("invalid_index", "ix_items_name")]


def test_no_ledger_creates_no_table(make_project, db, sql, run_cli, tmp_path):
    project = make_project(PARTIAL[:1])
    assert run_cli(cli_args(project, db, "--no-ledger", artifacts=tmp_path / "a")) == 0
    assert sql("SELECT to_regclass('public.safe_migrate_runs')") == [(None,)]


def test_ledger_table_option_puts_it_elsewhere(make_project, db, sql, run_cli, tmp_path):
    sql("CREATE SCHEMA ops")
    project = make_project(PARTIAL[:1])
    assert run_cli(cli_args(project, db, "--ledger-table", "ops.deploys",
                            artifacts=tmp_path / "a")) == 0
    assert [r["outcome"] for r in ledger_rows(sql, "ops.deploys")] == ["success"]
    assert sql("SELECT to_regclass('public.safe_migrate_runs')") == [(None,)]


def test_a_role_that_cannot_create_the_ledger_is_exit_2_with_the_way_out(
        make_project, db, sql, run_cli, tmp_path, logs):
    sql("CREATE ROLE sm_no_create LOGIN")
    try:
        sql(f'GRANT CONNECT ON DATABASE "{db.database}" TO sm_no_create')
        sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        sql("GRANT ALL ON alembic_version TO sm_no_create")
        sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        project = make_project([("r1", "op.execute('SELECT 1')")])
        limited = db.set(username="sm_no_create")
        assert run_cli(cli_args(project, limited, artifacts=tmp_path / "a")) == 2
        assert run_cli(cli_args(project, limited, "--no-ledger",
                                artifacts=tmp_path / "b")) == 0
        assert version_of(sql) == ["r1"]
    finally:
        sql("DROP OWNED BY sm_no_create")
        sql("DROP ROLE sm_no_create")


def test_plan_says_upgrade_would_refuse_while_a_partial_apply_is_unresolved(
        make_project, db, sql, run_cli, tmp_path, failing):
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    failing.delenv("SM_FAIL")
    assert run_cli(cli_args(project, db, "--lint", "off", command="plan")) == 3
    assert recover(run_cli, project, db, art, "--execute", "--yes") == 0
    assert run_cli(cli_args(project, db, "--lint", "off", command="plan")) == 0


def test_plan_refuses_a_target_behind_the_database(make_project, db, run_cli, tmp_path):
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
                            ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))")])
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 0
    assert run_cli(cli_args(project, db, "r1", "--lint", "off", command="plan")) == 3


def test_the_printed_commands_run_as_printed(make_project, db, run_cli, tmp_path, failing):
    """psql gets a libpq URL (no +driver, no password: PGPASSWORD or ~/.pgpass supply it)
    and the absolute path of the run's rollback.sql."""
    project = make_project(PARTIAL)
    art = partial_apply(project, db, run_cli, tmp_path)
    folder = run_dir(art)
    plan = json.loads((folder / "recovery-plan.json").read_text())
    [psql] = [c for c in plan["commands"] if c.startswith("psql ")]
    assert psql.startswith(f'psql "postgresql://{db.username}@{db.host}:{db.port}/{db.database}"')
    assert f"-f {(folder / 'rollback.sql').resolve()}" in psql


def test_each_run_gets_its_own_folder_under_artifacts_dir(make_project, db, run_cli, tmp_path):
    """A no-op run never overwrites the previous run's run.json beside its schema.diff."""
    project = make_project(PARTIAL[:1])
    art = tmp_path / "art"
    assert run_cli(cli_args(project, db, artifacts=art)) == 0
    first = run_dir(art)
    assert run_cli(cli_args(project, db, artifacts=art)) == 0
    runs = sorted(p.name for p in art.iterdir() if (p / "run.json").is_file())
    assert len(runs) == 2 and (first / "schema.diff").is_file()
    assert json.loads((first / "run.json").read_text())["migrations"][0]["revision"] == "r1"


def test_a_killed_run_without_ledger_is_recovered_from_its_artifacts(make_project, db, sql,
                                                                    run_cli, tmp_path):
    """--no-ledger: run.json names the step, pre-step-<rev>.json holds its catalog record."""
    project = make_project(KILLED)
    art = tmp_path / "a"
    kill_during(project, db, sql, art, "SELECT pg_sleep(2)", "--no-ledger")
    sql("CREATE TABLE app_made (id int)")
    wait_for_orphan(sql)
    assert recover(run_cli, project, db, art, "--no-ledger", "--execute", "--yes") == 0
    assert tables_of(sql) == {"keep", "app_made"} and version_of(sql) == ["r1"]
    assert (run_dir(art) / "resolved.json").is_file()
