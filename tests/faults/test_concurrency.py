"""Many runners at once on one database; two services with their own version tables."""

from __future__ import annotations

import time

import pytest
from support import advisory_locks, cli_args, json_events, spawn

MIGRATIONS = [(f"s{i}", f"op.execute(\"INSERT INTO applied_log VALUES ('s{i}')\")\n"
                        "op.execute('SELECT pg_sleep(0.3)')") for i in range(1, 5)]


@pytest.mark.slow
def test_sixteen_runners_apply_every_migration_exactly_once(make_project, db, sql, tmp_path):
    sql("CREATE TABLE applied_log (rev text)")
    project = make_project(MIGRATIONS)
    procs = [spawn(cli_args(project, db, "--advisory-lock-wait", "1s", "--lint", "off",
                            artifacts=tmp_path / f"r{i}")) for i in range(16)]
    results = [(proc.wait(120), proc.stderr.read()) for proc in procs]
    codes = sorted(code for code, _ in results)
    # The only acceptable failure is "lock busy" under the short --advisory-lock-wait.
    assert set(codes) <= {0, 4}, [err[-500:] for code, err in results if code not in (0, 4)]
    assert 0 in codes, codes
    # They did contend: some found the lock held (whether they then got it or gave up with 4
    # depends on how fast 16 interpreters start on the machine).
    waited = [err for _, err in results
              if any(e["event"] == "lock.waiting" for e in json_events(err))]
    assert waited, codes
    assert sql("SELECT rev, count(*) FROM applied_log GROUP BY rev ORDER BY rev") == [
        (f"s{i}", 1) for i in range(1, 5)]
    appliers = [sum(e["event"] == "migration.done" for e in json_events(err))
                for _, err in results]
    assert sorted(appliers)[-1] == 4 and sum(appliers) == 4
    for code, err in results:
        if code == 4:
            busy = [e for e in json_events(err) if e["event"] == "error"]
            assert busy and "advisory lock held by pid" in busy[0]["message"]
    assert advisory_locks(sql) == 0


def _service(make_project, name: str):
    """A service whose env.py keeps its revisions in its own version table."""
    body = (f"op.create_table('{name}_t', sa.Column('id', sa.Integer))\n"
            "op.execute('SELECT pg_sleep(1.5)')")
    project = make_project([(f"{name}1", body)])
    env = project.root / "env.py"
    env.write_text(env.read_text().replace(
        "connection=connection, target_metadata=target_metadata",
        f"connection=connection, target_metadata=target_metadata, "
        f"version_table='{name}_version'"))
    return project


def test_two_services_with_their_own_version_tables_run_in_parallel(make_project, db, sql,
                                                                    tmp_path):
    first, second = _service(make_project, "alpha"), _service(make_project, "beta")
    started = time.monotonic()
    # --advisory-lock-wait 0: had they shared a lock key, one of them would exit 4.
    procs = [spawn(cli_args(project, db, "--advisory-lock-wait", "0", "--lint", "off",
                            artifacts=tmp_path / name))
             for name, project in (("a", first), ("b", second))]
    results = [(proc.wait(60), proc.stderr.read()) for proc in procs]
    elapsed = time.monotonic() - started
    assert [code for code, _ in results] == [0, 0], [
        [e for e in json_events(err) if e.get("level") == "error"] or err[-300:]
        for _, err in results]
    assert sql("SELECT version_num FROM alpha_version") == [("alpha1",)]
    assert sql("SELECT version_num FROM beta_version") == [("beta1",)]
    keys = {e["key"] for _, err in results for e in json_events(err)
            if e["event"] == "lock.acquired"}
    assert len(keys) == 2
    # Both held their lock at the same time: their migrations overlapped.
    spans = []
    for _, err in results:
        events = json_events(err)
        spans.append((next(e["timestamp"] for e in events if e["event"] == "lock.acquired"),
                      next(e["timestamp"] for e in events if e["event"] == "lock.released")))
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end, (spans, elapsed)
    assert advisory_locks(sql) == 0


def test_a_lost_lock_session_stops_the_run_before_the_next_migration(make_project, db, sql,
                                                                      tmp_path):
    """The lock goes with its session: carrying on would let a second runner in."""
    project = make_project([
        ("r1", "op.create_table('t1', sa.Column('id', sa.Integer))\n"
               "op.execute('SELECT pg_sleep(1.5)')"),
        ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))"),
        ("r3", "op.create_table('t3', sa.Column('id', sa.Integer))"),
    ])
    proc = spawn(cli_args(project, db, "--lint", "off", artifacts=tmp_path / "a"))
    deadline = time.monotonic() + 30
    while not sql("SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND "
                  "application_name = 'safe-migrate-migration' AND query LIKE 'SELECT pg_sleep%%'"):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    terminated = sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name LIKE 'safe-migrate-lock %%'")
    assert terminated == [(True,)]
    code = proc.wait(60)
    events = json_events(proc.stderr.read())
    assert code == 7
    lost = [e for e in events if e["event"] == "lock.lost"]
    assert lost and lost[0]["next_revision"] == "r2"
    assert [e["revision"] for e in events if e["event"] == "migration.done"] == ["r1"]
    assert sql("SELECT version_num FROM alembic_version") == [("r1",)]
    assert sql("SELECT to_regclass('t2')") == [(None,)]

    rerun = spawn(cli_args(project, db, "--lint", "off", artifacts=tmp_path / "b"))
    assert rerun.wait(60) == 0, rerun.stderr.read()
    assert sql("SELECT version_num FROM alembic_version") == [("r3",)]
    assert advisory_locks(sql) == 0
