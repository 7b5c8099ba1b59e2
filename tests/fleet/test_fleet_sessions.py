"""A fleet worker keeps the lock's and the side session across its targets of one database:
the lock is still taken and released per target, and a kept session that died is reopened."""

from __future__ import annotations

from pathlib import Path

from fleet_support import create_schemas, fleet_json, ledger_rows, tenant_project, tenants_yaml
from structlog.testing import capture_logs
from support import cli_args

from runner.db.lock import lock_key

# r1 notes which backend holds the advisory lock; in tenant t1 only, r2 ends the runner's
# own sessions (the lock's and the side one) under it: t1 must stop (exit 7, the lock is
# lost), and t2, next in the same process, must get new, live sessions.
NOTE_LOCK = ('op.execute("INSERT INTO public.seen SELECT current_schema(), pid FROM '
             "pg_stat_activity WHERE application_name LIKE 'safe-migrate-lock%%'\")\n"
             'op.create_table("accounts", sa.Column("id", sa.BigInteger))')
KILL_IN_T1 = ('from alembic import context\n'
              'if context.get_x_argument(as_dictionary=True)["tenant"] == "t1":\n'
              '    op.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE '
              "application_name LIKE 'safe-migrate-lock%%' OR "
              "application_name = 'safe-migrate-monitor'\")\n"
              'op.add_column("accounts", sa.Column("nick", sa.Text))')


def test_kept_sessions_lock_per_target_and_reopen_when_lost(tmp_path: Path, db, sql,
                                                            run_cli) -> None:
    project = tenant_project(tmp_path / "project", [("r1", NOTE_LOCK), ("r2", KILL_IN_T1),
                                                    ("r3", "pass")])
    tenants = ["t0", "t1", "t2", "t3"]
    create_schemas(db, tenants)
    sql("CREATE TABLE public.seen (tenant text, pid int)")
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    with capture_logs() as events:
        code = run_cli(["upgrade", "-c", str(project.ini), "--database-url",
                        db.render_as_string(hide_password=False), "--targets", str(targets),
                        "--artifacts-dir", str(tmp_path / "art"), "--lint", "off",
                        "--parallel", "1"])
    assert code == 7
    report = fleet_json(tmp_path / "art")
    assert {t["name"]: t["exit_code"] for t in report["targets"]} == {
        "t0": 0, "t1": 7, "t2": 0, "t3": 0}
    assert [e["fleet_target"] for e in events if e["event"] == "lock.lost"] == ["t1"]
    # Its own lock per target, keyed by the database and that tenant's version table, and
    # released at each target's end (t1's went with its session).
    acquired = [(e["fleet_target"], e["key"]) for e in events if e["event"] == "lock.acquired"]
    assert acquired == [(t, lock_key(db.database, t, "alembic_version")) for t in tenants]
    released = [e["fleet_target"] for e in events if e["event"] == "lock.released"]
    assert released == ["t0", "t2", "t3"]
    pid = dict(sql("SELECT tenant, pid FROM public.seen"))
    assert pid["t0"] == pid["t1"]  # kept from one target to the next
    assert pid["t2"] != pid["t1"]  # the lost one was not handed out again
    assert pid["t3"] == pid["t2"]
    assert ledger_rows(db, "t2") == [{"outcome": "success", "exit_code": 0}]
    assert ledger_rows(db, "t3") == [{"outcome": "success", "exit_code": 0}]
    # Nothing of ours is left open once the fleet is done: no lock, no session.
    assert sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert sql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
               "'safe-migrate%%'") == [(0,)]


def test_a_ledger_dropped_after_this_process_ensured_it_is_made_again(make_project, db, sql,
                                                                        run_cli,
                                                                        tmp_path: Path) -> None:
    """The ledger's create-if-missing runs once per process and table: a ledger dropped in
    between is created again when the next run's row finds it gone."""
    project = make_project([("r1", 'op.create_table("a", sa.Column("id", sa.Integer))'),
                            ("r2", 'op.create_table("b", sa.Column("id", sa.Integer))')])
    assert run_cli(cli_args(project, db, "--lint", "off", "r1",
                            artifacts=tmp_path / "one")) == 0
    sql("DROP TABLE public.safe_migrate_runs")
    assert run_cli(cli_args(project, db, "--lint", "off", artifacts=tmp_path / "two")) == 0
    assert sql("SELECT target, outcome FROM public.safe_migrate_runs") == [("heads", "success")]
    assert sql("SELECT version_num FROM alembic_version") == [("r2",)]
