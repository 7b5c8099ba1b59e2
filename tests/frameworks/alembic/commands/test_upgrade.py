"""`safe-migrate upgrade` against a real PostgreSQL: the issue's core scenarios."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs
from support import (
    ON_THE_USERS_DRIVER,
    RAN_ON,
    advisory_locks,
    cli_args,
    json_events,
    open_transaction,
    run_dir,
    spawn,
    tables_of,
    version_of,
)

from runner.urls import SQLALCHEMY_2, libpq_kwargs

FIVE = [
    ("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"),
    ("r2", "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"),
    ("r3", "op.create_table('t3', sa.Column('id', sa.Integer, primary_key=True))"),
    ("r4", "op.create_table('t4', sa.Column('id', sa.Integer, primary_key=True))"),
    ("r5", "op.create_table('t5', sa.Column('id', sa.Integer, primary_key=True))"),
]


def events_named(logs, name):
    return [e for e in logs if e["event"] == name]


def test_happy_path_then_idempotent_rerun(make_project, db, sql, run_cli, tmp_path):
    project = make_project(FIVE)
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a1")) == 0
    assert version_of(sql) == ["r5"]
    assert tables_of(sql) == {"t1", "t2", "t3", "t4", "t5"}
    assert [e["revision"] for e in events_named(logs, "migration.done")] == [
        "r1", "r2", "r3", "r4", "r5"]
    assert all(e["duration_ms"] >= 0 for e in events_named(logs, "migration.done"))
    done = events_named(logs, "run.done")[-1]
    assert (done["outcome"], done["exit_code"], done["applied"]) == ("success", 0, 5)
    assert events_named(logs, "lock.acquired") and events_named(logs, "lock.released")
    run = json.loads((run_dir(tmp_path / "a1") / "run.json").read_text())
    assert run["exit_code"] == 0 and [m["outcome"] for m in run["migrations"]] == ["applied"] * 5
    assert "password" not in json.dumps(run)

    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a2")) == 0
    assert events_named(logs, "migration.start") == []
    assert events_named(logs, "run.done")[-1]["applied"] == 0
    assert advisory_locks(sql) == 0


def test_failure_in_third_of_five_rolls_back_alone(make_project, db, sql, run_cli, tmp_path):
    revisions = list(FIVE)
    revisions[2] = ("r3", "op.create_table('t3', sa.Column('id', sa.Integer, primary_key=True))\n"
                          "op.execute('SELECT * FROM no_such_table')")
    project = make_project(revisions)
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 5
    assert version_of(sql) == ["r2"]
    assert tables_of(sql) == {"t1", "t2"}  # r3's table was rolled back with it
    failed = events_named(logs, "migration.failed")[-1]
    assert failed["revision"] == "r3" and failed["sqlstate"] == "42P01" and not failed["partial"]
    plan = json.loads((run_dir(tmp_path / "a") / "recovery-plan.json").read_text())
    assert plan["status"] == "clean-rollback"
    assert plan["failed_revision"] == "r3" and plan["stamp_target"] == "r2"
    assert plan["leftover_objects"] == [] and plan["rollback_sql"] == []
    assert advisory_locks(sql) == 0


def _hot_table_at_r1(make_project, db, run_cli, tmp_path):
    project = make_project([("r1", "op.create_table('hot', sa.Column('id', sa.Integer))"),
                            ("r2", "op.add_column('hot', sa.Column('note', sa.Text))")])
    assert run_cli(cli_args(project, db, "r1", artifacts=tmp_path / "a0")) == 0
    return project


def test_blocked_migration_is_retried_until_the_blocker_ends(make_project, db, sql, run_cli,
                                                             tmp_path):
    project = _hot_table_at_r1(make_project, db, run_cli, tmp_path)
    # ACCESS SHARE held by an open transaction for 2.5 s, while the run goes on.
    with open_transaction(db, "SELECT * FROM hot", hold=2.5) as pid, capture_logs() as logs:
        code = run_cli(cli_args(project, db, "--lock-timeout", "200ms", "--lock-retries", "10",
                                artifacts=tmp_path / "a1"))
    assert code == 0 and version_of(sql) == ["r2"]
    retries = events_named(logs, "migration.retry")
    assert retries and all(e["revision"] == "r2" and e["sqlstate"] == "55P03" for e in retries)
    # Blockers are sampled (several times per lock wait): a loaded machine may miss one wait,
    # never all of them, and a retry that names a blocker names the right one.
    named = [e for e in retries if e["blocking_pids"]]
    assert named and all(e["blocking_pids"] == [pid] for e in named)
    assert all("SELECT * FROM hot" in e["blockers"][0]["query"] for e in named)
    run = json.loads((run_dir(tmp_path / "a1") / "run.json").read_text())
    assert run["migrations"][0]["attempts"] == len(retries) + 1
    assert run["migrations"][0]["lock_wait_ms"] > 0


def test_retries_exhausted_exit_5_naming_the_blocker(make_project, db, sql, run_cli, tmp_path):
    project = _hot_table_at_r1(make_project, db, run_cli, tmp_path)
    with open_transaction(db, "SELECT * FROM hot", hold=30) as pid, capture_logs() as logs:
        code = run_cli(cli_args(project, db, "--lock-timeout", "200ms", "--lock-retries", "1",
                                artifacts=tmp_path / "a1"))
    assert code == 5
    assert len(events_named(logs, "migration.retry")) == 1
    plan = json.loads((run_dir(tmp_path / "a1") / "recovery-plan.json").read_text())
    assert f"pid {pid}" in plan["error"]
    assert version_of(sql) == ["r1"] and advisory_locks(sql) == 0


SLOW = [(f"s{i}", f"op.execute('INSERT INTO applied_log VALUES (%s)' % repr('s{i}'))\n"
                  "op.execute('SELECT pg_sleep(0.3)')") for i in range(1, 5)]


@pytest.mark.parametrize("runners", [2, 4])
def test_concurrent_runners_apply_each_migration_once(make_project, db, sql, tmp_path, runners):
    sql("CREATE TABLE applied_log (rev text)")
    project = make_project(SLOW)
    procs = [spawn(cli_args(project, db, "--advisory-lock-wait", "30s",
                            artifacts=tmp_path / f"r{i}")) for i in range(runners)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    codes = [code for code, _ in results]
    assert set(codes) <= {0, 4}, results
    assert sql("SELECT rev, count(*) FROM applied_log GROUP BY rev ORDER BY rev") == [
        (f"s{i}", 1) for i in range(1, 5)]
    appliers = [sum(1 for e in json_events(err) if e["event"] == "migration.done")
                for _, err in results]
    assert sorted(appliers) == [0] * (runners - 1) + [4]
    waited = [e for _, err in results for e in json_events(err) if e["event"] == "lock.waiting"]
    assert waited and all(e["holder_pid"] for e in waited)
    assert advisory_locks(sql) == 0


def test_lock_held_past_wait_exits_4(make_project, db, sql, tmp_path):
    sql("CREATE TABLE applied_log (rev text)")
    project = make_project([("s1", "op.execute('SELECT pg_sleep(4)')")])
    first = spawn(cli_args(project, db, artifacts=tmp_path / "a"))
    time.sleep(2.0)
    second = spawn(cli_args(project, db, "--advisory-lock-wait", "500ms",
                            artifacts=tmp_path / "b"))
    assert second.wait(30) == 4
    err = second.stderr.read()
    assert "advisory lock held by pid" in err and "safe-migrate-lock" in err
    assert first.wait(30) == 0


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sigterm_mid_migration_rolls_back_and_frees_the_lock(driver, make_project, db, sql,
                                                             tmp_path):
    """psycopg2 waits for a statement inside C code, where no Python signal handler runs:
    the signal still reaches the runner at once (the wakeup fd) and the statement is cancelled."""
    if driver == "psycopg2":
        db = db.set(drivername="postgresql+psycopg2")
    elif not SQLALCHEMY_2:
        pytest.skip("SQLAlchemy 1.4 has no psycopg 3 dialect")
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
                            ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))\n"
                                   "op.execute('SELECT pg_sleep(60)')")])
    proc = spawn(cli_args(project, db, artifacts=tmp_path / "a"))
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if '"migration.start"' in line and '"r2"' in line:
            break
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 8
    assert time.monotonic() - sent < 5
    assert version_of(sql) == ["r1"] and tables_of(sql) == {"t1"}
    assert advisory_locks(sql) == 0
    run = json.loads((run_dir(tmp_path / "a") / "run.json").read_text())
    assert run["exit_code"] == 8 and run["migrations"][-1]["outcome"] == "interrupted"


@pytest.mark.parametrize("style", ["generic", "section-engine", "connection-attribute",
                                   "engine-begin", "connection-begin", "async"])
def test_env_py_styles_run_unchanged_one_transaction_per_migration(style, make_project, db, sql,
                                                                   run_cli, tmp_path):
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))"),
                            ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))\n"
                                   "raise RuntimeError('boom')")], env_style=style)
    if style == "async" and not SQLALCHEMY_2:  # the async template needs an async driver
        db = db.set(drivername="postgresql+asyncpg")
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 5
    # r1 committed on its own although env.py never asked for transaction_per_migration.
    assert version_of(sql) == ["r1"] and tables_of(sql) == {"t1"}
    assert [e["revision"] for e in events_named(logs, "migration.done")] == ["r1"]
    failed = events_named(logs, "migration.failed")[-1]
    assert failed["type"] == "RuntimeError" and failed["message"] == "boom"


def test_timeouts_apply_to_every_migration_statement(make_project, db, sql, run_cli, tmp_path):
    body = ("op.execute(\"CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lt, "
            "current_setting('statement_timeout') AS st\")")
    project = make_project([("r1", body)])
    assert run_cli(cli_args(project, db, "--lock-timeout", "750ms", "--statement-timeout", "1m",
                            artifacts=tmp_path / "a")) == 0
    assert sql("SELECT lt, st FROM seen") == [("750ms", "1min")]


def test_statement_timeout_cancels_a_long_migration(make_project, db, sql, run_cli, tmp_path):
    project = make_project([("r1", "op.execute('SELECT pg_sleep(5)')")])
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, "--statement-timeout", "300ms",
                                artifacts=tmp_path / "a")) == 5
    assert events_named(logs, "migration.failed")[-1]["sqlstate"] == "57014"
    assert events_named(logs, "migration.retry") == []  # not a lock race: no retry


def test_x_arguments_reach_env_py(make_project, db, sql, run_cli, tmp_path):
    project = make_project([("r1", "from alembic import context\n"
                                   "op.execute(\"CREATE TABLE %s (id int)\" % "
                                   "context.get_x_argument(as_dictionary=True)['table'])")])
    assert run_cli(cli_args(project, db, "-x", "table=from_x", artifacts=tmp_path / "a")) == 0
    assert tables_of(sql) == {"from_x"}


def test_database_url_file_and_async_url(make_project, db, sql, tmp_path, monkeypatch, run_cli):
    project = make_project(FIVE[:1], env_style="async")  # an asyncpg URL needs an async env.py
    url_file = tmp_path / "url"
    url_file.write_text(db.set(drivername="postgresql+asyncpg").render_as_string(
        hide_password=False) + "\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    args = ["upgrade", "-c", str(project.ini), "--artifacts-dir", str(tmp_path / "a")]
    assert run_cli(args) == 0
    assert version_of(sql) == ["r1"]


def test_unreachable_database_exits_7(make_project, tmp_path, run_cli, capsys):
    project = make_project(FIVE[:1])
    started = time.monotonic()
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url",
                    "postgresql://u:Sup3rSecret@127.0.0.1:1/x", "--connect-timeout", "1s",
                    "--artifacts-dir", str(tmp_path / "a"), "--log-format", "console"])
    assert code == 7
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "Sup3rSecret" not in err and "error:" in err and "Traceback" not in err


def test_multiple_heads_refused_with_merge_command(make_project, db, sql, run_cli, tmp_path,
                                                   capsys):
    project = make_project(FIVE[:1])
    project.add("b1", "r1", "op.create_table('b1', sa.Column('id', sa.Integer))")
    project.add("b2", "r1", "op.create_table('b2', sa.Column('id', sa.Integer))")
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 3
    err = capsys.readouterr().err
    assert "merge -m 'merge heads' b1 b2" in err or "merge -m 'merge heads' b2 b1" in err
    assert version_of(sql) == [] and tables_of(sql) == set()


def test_unknown_database_revision_refused(make_project, db, sql, run_cli, tmp_path, capsys):
    project = make_project(FIVE[:2])
    sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    sql("INSERT INTO alembic_version VALUES ('gone123')")
    assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 3
    err = capsys.readouterr().err
    assert "gone123" in err and "stamp" in err
    assert version_of(sql) == ["gone123"] and tables_of(sql) == set()


def test_termination_log_gets_a_summary(make_project, db, tmp_path):
    from runner.main import main

    project = make_project(FIVE[:1])
    log = tmp_path / "termination-log"
    code = main([*cli_args(project, db, "--no-schema-diff", artifacts=tmp_path / "a"),
                 "--termination-log", str(log)], configure_logging=False)
    assert code == 0
    assert log.read_text().startswith("safe-migrate success: exit 0, 1 applied")


def test_termination_log_names_a_failure_before_the_run(make_project, db, tmp_path):
    from runner.main import main

    project = make_project(FIVE[:1])
    log = tmp_path / "termination-log"
    code = main([*cli_args(project, db, "--no-schema-diff", artifacts=tmp_path / "a"),
                 "--termination-log", str(log), "nosuchrev"], configure_logging=False)
    assert code == 3
    line = log.read_text()
    assert line.startswith("safe-migrate upgrade failed: exit 3; ") and "nosuchrev" in line


OPTUNA_ALEMBIC = Path(__import__("optuna").__file__).parent / "storages" / "_rdb"


def test_optuna_migrations_upgrade_base_to_head(db, sql, run_cli, tmp_path, monkeypatch):
    ini = OPTUNA_ALEMBIC / "alembic.ini"
    monkeypatch.chdir(OPTUNA_ALEMBIC)  # its script_location is relative, as `alembic` expects
    with capture_logs() as logs:
        code = run_cli(["upgrade", "-c", str(ini), "--database-url",
                        db.render_as_string(hide_password=False),
                        "--artifacts-dir", str(tmp_path / "a")])
    assert code == 0, [e for e in logs if e["log_level"] == "error"]
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(Config(str(ini)))
    heads = script.get_heads()
    assert len(heads) == 1
    assert version_of(sql) == list(heads)
    every = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert [e["revision"] for e in events_named(logs, "migration.done")] == every
    assert "studies" in tables_of(sql)


def test_drift_refused_after_manual_alter_table(make_project, db, sql, run_cli, tmp_path):
    project = make_project([])
    for rev, down in (("r1", None), ("r2", "r1"), ("r3", "r2")):
        table = "t" + rev[1]
        project.add(rev, down, f"op.create_table('{table}', sa.Column('id', sa.Integer))",
                    f"op.drop_table('{table}')")
    schemas = tmp_path / "schemas"
    assert run_cli(cli_args(project, db, "--schema-dir", str(schemas), command="verify")) == 0
    assert run_cli(cli_args(project, db, "r2", artifacts=tmp_path / "a0")) == 0
    sql("ALTER TABLE t1 ADD COLUMN sneaky int")  # someone changed production by hand
    art = tmp_path / "a1"
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, "--expected-schema", str(schemas),
                                artifacts=art)) == 3
    assert "sneaky" in (run_dir(art) / "schema-drift.diff").read_text()
    assert events_named(logs, "preflight.failed")
    assert version_of(sql) == ["r2"] and "t3" not in tables_of(sql)
    assert run_cli(cli_args(project, db, "--expected-schema", str(schemas), "--allow-drift",
                            artifacts=tmp_path / "a2")) == 0
    assert version_of(sql) == ["r3"]


def test_stderr_is_json_lines_only_with_the_default_lint(make_project, db, sql, tmp_path):
    """env.py's fileConfig() turns alembic's INFO lines back on in every env.py run (lint's
    offline run too): not one of them may slip between the JSON events."""
    project = make_project(FIVE[:2])
    proc = spawn(cli_args(project, db, artifacts=tmp_path / "a"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    lines = stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]  # raises on any non-JSON line
    lint_done = events_named(events, "lint.done")
    assert lint_done and lint_done[0]["revisions"] == 2
    assert version_of(sql) == ["r2"]


def test_a_lost_side_session_before_a_step_is_exit_7_and_the_step_never_starts(
        make_project, db, sql, tmp_path):
    """The catalog record before a non-transactional migration cannot be taken (the runner's
    own session was terminated while r1 ran): retry-safe exit 7, not a failed migration, and
    r2, which could have left part of itself behind unrecorded, never starts."""
    project = make_project([
        ("r1", "op.execute('SELECT pg_sleep(1.5)')"),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.execute('CREATE TABLE IF NOT EXISTS t2 (id int)')"),
    ])
    proc = spawn(cli_args(project, db, "--lint", "off", artifacts=tmp_path / "a"))
    deadline = time.monotonic() + 30
    while not sql("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND "
                  "application_name = 'safe-migrate-migration' AND "
                  "query LIKE 'SELECT pg_sleep%%'"):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "application_name = 'safe-migrate-monitor' AND datname = current_database()")
    code = proc.wait(60)
    events = json_events(proc.stderr.read())
    assert code == 7
    assert [e["revision"] for e in events if e["event"] == "migration.done"] == ["r1"]
    assert [e["revision"] for e in events if e["event"] == "migration.start"] == ["r1"]
    error = [e for e in events if e["event"] == "error"][-1]
    assert "before migration r2" in error["message"]
    assert version_of(sql) == ["r1"] and "t2" not in tables_of(sql)


ENV_FROM_LIVE_DB_URL = '''
import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["LIVE_DB_URL"]
with create_engine(url, poolclass=pool.NullPool).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''


@pytest.mark.parametrize("command", ["upgrade", "status", "plan"])
def test_an_env_py_connecting_elsewhere_than_the_url_given_is_refused(
        command, make_project, db, sql, server, monkeypatch, run_cli, tmp_path, capsys, logs):
    """env.py ignores sqlalchemy.url: the database it would migrate is not the one named."""
    other = server.create_database()
    try:
        project = make_project(FIVE[:2])
        (project.root / "env.py").write_text(ENV_FROM_LIVE_DB_URL)
        monkeypatch.setenv("LIVE_DB_URL", other.render_as_string(hide_password=False))
        artifacts = None if command == "plan" else tmp_path / "a"  # plan writes none
        code = run_cli(cli_args(project, db, command=command, artifacts=artifacts))
        err = capsys.readouterr().err
        assert code == 2, err
        assert "env.py connects to" in err and other.database in err
        # upgrade's lint probes env.py first: its refusal is the run's, not "lint unavailable"
        assert not events_named(logs, "lint.unavailable")
        assert version_of(sql) == []
        with psycopg.connect(**libpq_kwargs(other), autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
    finally:
        server.drop_database(other)


@pytest.mark.parametrize(("mode", "expected"), [("warn", 0), ("error", 2)])
@pytest.mark.usefixtures("no_squawk")
def test_without_squawk_only_lint_error_refuses(mode, expected, make_project, db, sql,
                                                run_cli, tmp_path, logs):
    project = make_project(FIVE[:2])
    code = run_cli(cli_args(project, db, "--lint", mode, "--no-schema-diff",
                            artifacts=tmp_path / "a"))
    assert code == expected
    unavailable = events_named(logs, "lint.unavailable")
    if mode == "warn":
        assert len(unavailable) == 1 and "squawk not found" in unavailable[0]["error"]
        assert version_of(sql) == [FIVE[1][0]]
    else:
        assert not unavailable and version_of(sql) == []


def test_async_template_with_an_asyncpg_url(make_project, db, sql, run_cli, tmp_path, logs):
    """alembic's `async` template (async_engine_from_config, run_sync, asyncio.run) with the
    URL a project using it has: postgresql+asyncpg://."""
    project = make_project(FIVE[:2], env_style="async")
    url = db.set(drivername="postgresql+asyncpg")
    assert run_cli(["upgrade", "-c", str(project.ini), "--database-url",
                    url.render_as_string(hide_password=False), "--log-format", "json",
                    "--artifacts-dir", str(tmp_path / "a")]) == 0
    assert version_of(sql) == ["r2"] and tables_of(sql) == {"t1", "t2"}
    assert [e["revision"] for e in events_named(logs, "migration.done")] == ["r1", "r2"]


def _lock_keys(logs):
    return {e["key"] for e in events_named(logs, "lock.acquired")}


def test_schema_per_tenant_lock_and_version_table_follow_the_tenant(
        make_project, db, sql, run_cli, tmp_path, logs):
    from runner.db.lock import lock_key

    sql("CREATE SCHEMA acme; CREATE SCHEMA globex")
    project = make_project(FIVE[:2], env_style="tenant")
    for tenant in ("acme", "globex"):
        logs.clear()
        assert run_cli(cli_args(project, db, "-x", f"tenant={tenant}", "--lint", "off",
                                artifacts=tmp_path / tenant)) == 0
        assert _lock_keys(logs) == {lock_key(db.database, tenant, "alembic_version")}
        assert sql(f"SELECT version_num FROM {tenant}.alembic_version") == [("r2",)]
        assert sql("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename IN "
                   "('t1', 't2')", (tenant,)) == [(2,)]
    assert version_of(sql) == [] and tables_of(sql) == set()  # nothing in public


def test_an_env_py_looping_over_tenants_is_refused_before_anything_runs(
        make_project, db, sql, run_cli, tmp_path, capsys):
    """Two version tables in one env.py run: the second would be migrated without its own
    lock. Refused (exit 2), naming it, before either tenant is touched."""
    sql("CREATE SCHEMA acme; CREATE SCHEMA globex")
    project = make_project(FIVE[:2], env_style="tenant-loop")
    for lint in ("off", "warn"):
        code = run_cli(cli_args(project, db, "-x", "tenants=acme,globex", "--lint", lint,
                                artifacts=tmp_path / lint))
        err = capsys.readouterr().err
        assert code == 2, err
        assert "globex.alembic_version" in err
        assert sql("SELECT count(*) FROM pg_tables WHERE schemaname IN ('acme', 'globex')"
                   ) == [(0,)]
        assert advisory_locks(sql) == 0


def test_multidb_template_second_database_refused_before_anything_runs(
        make_project, db, sql, server, run_cli, tmp_path, capsys):
    """alembic's `multidb` template migrates every database in `databases =` in one env.py
    run: each would need its own lock and URL check. Refused (exit 2), naming the second
    database, nothing migrated on either."""
    other = server.create_database()
    try:
        project = make_project([], env_style="multidb")
        project.add_modules([
            ("r1", None, "def upgrade(engine_name):\n"
                         "    op.create_table(f'{engine_name}_t', sa.Column('id', sa.Integer))\n"
                         "\ndef downgrade(engine_name):\n    pass\n")])
        ini = project.ini.read_text().replace(
            "path_separator = os\n", "path_separator = os\ndatabases = engine1, engine2\n")
        for name, url in (("engine1", db), ("engine2", other)):
            rendered = url.render_as_string(hide_password=False).replace("%", "%%")
            ini += f"\n[{name}]\nsqlalchemy.url = {rendered}\n"
        project.ini.write_text(ini)
        args = ["upgrade", "-c", str(project.ini), "--log-format", "json", "--lint", "off",
                "--artifacts-dir", str(tmp_path / "a")]
        code = run_cli(args)  # URLs from the ini: no --database-url to compare with
        err = capsys.readouterr().err
        assert code == 2, err
        assert other.database in err
        assert version_of(sql) == [] and tables_of(sql) == set()
        with psycopg.connect(**libpq_kwargs(other), autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
            assert conn.execute("SELECT to_regclass('engine2_t')").fetchone() == (None,)
    finally:
        server.drop_database(other)


@pytest.mark.parametrize(("driver", "style"), [("psycopg2", "generic"), ("asyncpg", "async")])
def test_migrations_run_on_the_driver_the_url_names(driver, style, make_project, db, sql,
                                                    run_cli, tmp_path, logs):
    """--database-url postgresql+<driver>://: env.py gets that URL, as under bare alembic; the
    runner's own sessions (lock, monitor, ledger) still work on psycopg 3."""
    project = make_project([("r1", ON_THE_USERS_DRIVER[driver] + "\n" + RAN_ON),
                            ("r2", FIVE[1][1])], env_style=style)
    url = db.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url", url, "--log-format",
                    "json", "--artifacts-dir", str(tmp_path / "a")])
    if driver == "asyncpg" and not SQLALCHEMY_2:
        # SQLAlchemy 1.4's asyncpg adapter %-formats every statement: bare alembic fails
        # there with this same TypeError (checked by hand), and so does the run: exit 5.
        assert code == 5
        failed = events_named(logs, "migration.failed")[-1]
        assert failed["type"] == "TypeError" and "not enough arguments" in failed["message"]
        return
    assert code == 0
    assert version_of(sql) == ["r2"]
    assert tables_of(sql) - {"nums"} == {f"ran_on_{driver}", "t2"}
    assert events_named(logs, "lock.acquired") and events_named(logs, "lock.released")
    assert "+psycopg://" in events_named(logs, "database")[0]["url"]  # our side sessions


DUPLICATE_KEY = [
    ("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))\n"
           "op.execute('INSERT INTO t1 VALUES (1)')"),
    ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))\n"
           "op.execute('INSERT INTO t1 VALUES (1)')"),
]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_failure_names_its_file_line_and_postgres_detail_everywhere(make_project, db, sql,
                                                                      run_cli, tmp_path):
    project = make_project(DUPLICATE_KEY)
    path = project.versions / "r2.py"
    line = _line_of(path, "INSERT INTO t1")
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 5
    detail = "Key (id)=(1) already exists."
    failed = events_named(logs, "migration.failed")[-1]
    assert (failed["sqlstate"], failed["file"], failed["line"], failed["detail"]) == (
        "23505", str(path), line, detail)
    assert failed["hint"] is None
    folder = run_dir(tmp_path / "a")
    run = json.loads((folder / "run.json").read_text())
    error = run["migrations"][-1]["error"]
    assert (error["file"], error["line"], error["detail"]) == (str(path), line, detail)
    where = f"migration r2 ({path}:{line}) failed"
    assert run["error"].startswith(where) and f"DETAIL: {detail}" in run["error"]
    steps = sql("SELECT steps FROM safe_migrate_runs WHERE run_id = %s", (run["run_id"],))[0][0]
    assert steps[-1]["error"]["line"] == line and steps[-1]["error"]["detail"] == detail
    plan = json.loads((folder / "recovery-plan.json").read_text())
    assert plan["error"].startswith(where) and f"DETAIL: {detail}" in plan["error"]
    assert f"# fix {path}:{line}, then:" in plan["commands"]
    markdown = (folder / "recovery-plan.md").read_text()
    assert f"{path}:{line}" in markdown and f"DETAIL: {detail}" in markdown


def test_a_failure_carries_postgres_hint(make_project, db, run_cli, tmp_path):
    project = make_project([("r1", "op.execute('SELECT no_such_function(1)')")])
    with capture_logs() as logs:
        assert run_cli(cli_args(project, db, artifacts=tmp_path / "a")) == 5
    failed = events_named(logs, "migration.failed")[-1]
    assert failed["sqlstate"] == "42883" and failed["hint"].startswith("No function matches")
    assert failed["line"] == _line_of(project.versions / "r1.py", "no_such_function")


def test_psycopg2_migrations_report_detail_and_line_too(make_project, db, run_cli, tmp_path):
    project = make_project(DUPLICATE_KEY)
    url = db.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    args = ["upgrade", "-c", str(project.ini), "--database-url", url, "--artifacts-dir",
            str(tmp_path / "a")]
    with capture_logs() as logs:
        assert run_cli(args) == 5
    failed = events_named(logs, "migration.failed")[-1]
    assert failed["type"] == "UniqueViolation" and failed["detail"] == (
        "Key (id)=(1) already exists.")
    assert failed["line"] == _line_of(project.versions / "r2.py", "INSERT INTO t1")
