"""upgrade --targets: tenant schemas and separate databases, on a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psycopg
from fleet_support import (
    by_name,
    create_schemas,
    fleet_json,
    ledger_rows,
    tenant_project,
    tenants_yaml,
    versions,
)
from support import Server, libpq, spawn

from runner.db.lock import lock_key


def fleet_args(project_ini: Path, db_url: str, targets: Path, artifacts: Path,
               *extra: str) -> list[str]:
    return ["upgrade", "-c", str(project_ini), "--database-url", db_url, "--targets",
            str(targets), "--artifacts-dir", str(artifacts), "--log-format", "json",
            "--lint", "off", *extra]


def test_200_schemas_and_5_databases_in_parallel(tmp_path: Path, server: Server, db) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = [f"t{i:03d}" for i in range(200)]
    create_schemas(db, tenants)
    databases = [server.create_database() for _ in range(5)]
    try:
        # Each database by a different route: inline url, url_env, url_file.
        env = {"FLEET_DB_0": databases[0].render_as_string(hide_password=False),
               "FLEET_DB_1": databases[1].render_as_string(hide_password=False)}
        url_file = tmp_path / "db2.url"
        url_file.write_text(databases[2].render_as_string(hide_password=False) + "\n")
        extra = ("- {name: db0, url_env: FLEET_DB_0}\n- {name: db1, url_env: FLEET_DB_1}\n"
                 f"- {{name: db2, url_file: {url_file}}}\n"
                 + "".join(f"- {{name: db{i}, url: "
                           f"'{databases[i].render_as_string(hide_password=False)}'}}\n"
                           for i in (3, 4)))
        targets = tenants_yaml(tmp_path / "targets.yaml", tenants, extra)
        db_url = db.render_as_string(hide_password=False)
        started = time.monotonic()
        proc = spawn(fleet_args(project.ini, db_url, targets, tmp_path / "art",
                                "--parallel", "4"), env=env)
        out, err = proc.communicate(timeout=300)
        first = time.monotonic() - started
        assert proc.returncode == 0, err[-2000:]
        report = fleet_json(tmp_path / "art")
        assert report["counts"] == {"success": 205}, report["counts"]
        assert report["exit_code"] == 0 and report["not_started"] == 0
        found = versions(db, tenants)
        assert all(v == ["r3"] for v in found.values()), found
        for url in databases:
            assert versions(url, ["public"]) == {"public": ["r3"]}
        # Each migrated target: its own ledger row, in its own schema, and its folder.
        assert ledger_rows(db, "t042") == [{"outcome": "success", "exit_code": 0}]
        entry = by_name(report)["t042"]
        assert entry["applied"] == ["r1", "r2", "r3"] and entry["heads_after"] == ["r3"]
        assert json.loads((Path(entry["artifacts"]) / "run.json").read_text())["exit_code"] == 0
        assert "fleet (" not in out and "205 success" in out
        # No URL's password anywhere in the report (the server's test user has none; the
        # report only ever holds masked URLs).
        assert by_name(report)["db3"]["database_url"] is not None

        # Again: every target is at head and costs one read: no lock, no ledger row, no folder.
        started = time.monotonic()
        proc = spawn(fleet_args(project.ini, db_url, targets, tmp_path / "art2",
                                "--parallel", "4"), env=env)
        _, err = proc.communicate(timeout=120)
        second = time.monotonic() - started
        assert proc.returncode == 0, err[-2000:]
        again = fleet_json(tmp_path / "art2")
        assert again["counts"] == {"up-to-date": 205}
        assert ledger_rows(db, "t042") == [{"outcome": "success", "exit_code": 0}]
        assert not any(p.is_dir() for p in next((tmp_path / "art2").iterdir()).iterdir())
        assert '"lock.acquired"' not in err
        print(f"205 targets: first run {first:.1f}s, at head {second:.1f}s")
        assert first < 60, first
    finally:
        for url in databases:
            server.drop_database(url)


def test_one_failing_tenant_exits_5_and_the_others_reach_head(tmp_path: Path, db) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = [f"t{i}" for i in range(12)]
    create_schemas(db, tenants)
    with psycopg.connect(libpq(db), autocommit=True) as conn:  # t5 drifted: r1 cannot run
        conn.execute('CREATE TABLE "t5".accounts (id int)')
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    proc = spawn(fleet_args(project.ini, db.render_as_string(hide_password=False), targets,
                            tmp_path / "art", "--parallel", "3"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err[-2000:]
    report = fleet_json(tmp_path / "art")
    assert report["exit_code"] == 5
    assert report["counts"] == {"migration-failed": 1, "success": 11}
    bad = by_name(report)["t5"]
    assert bad["exit_code"] == 5 and bad["applied"] == [] and "42P07" in bad["error"]
    assert (Path(bad["artifacts"]) / "recovery-plan.json").is_file()
    assert ledger_rows(db, "t5") == [{"outcome": "migration-failed", "exit_code": 5}]
    found = versions(db, tenants)
    assert found.pop("t5") == []
    assert all(v == ["r3"] for v in found.values()), found
    assert "t5: exit 5 migration-failed" in out
    plan = json.loads((Path(bad["artifacts"]) / "recovery-plan.json").read_text())
    assert any(c.endswith("-x tenant=t5") for c in plan["commands"]), plan["commands"]


def test_a_failing_canary_starts_nothing_else(tmp_path: Path, db) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = [f"c{i}" for i in range(10)]
    create_schemas(db, tenants)
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute('CREATE TABLE "c1".accounts (id int)')  # the second canary fails
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    proc = spawn(fleet_args(project.ini, db.render_as_string(hide_password=False), targets,
                            tmp_path / "art", "--canary", "3", "--parallel", "2"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err[-2000:]
    report = fleet_json(tmp_path / "art")
    assert report["stopped_by"] == "canary-failed" and report["not_started"] == 7
    assert [t["outcome"] for t in report["targets"][:3]] == ["success", "migration-failed",
                                                            "success"]
    found = versions(db, tenants)
    assert [found[t] for t in tenants[3:]] == [[]] * 7  # never touched


def test_max_failures_stops_starting_targets(tmp_path: Path, db, run_cli) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = [f"m{i}" for i in range(8)]
    create_schemas(db, tenants)
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        for bad in ("m1", "m3", "m6"):
            conn.execute(f'CREATE TABLE "{bad}".accounts (id int)'.encode())
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    code = run_cli(fleet_args(project.ini, db.render_as_string(hide_password=False), targets,
                              tmp_path / "art", "--max-failures", "2", "--no-schema-diff"))
    assert code == 5
    report = fleet_json(tmp_path / "art")
    outcomes = [t["outcome"] for t in report["targets"]]
    assert outcomes == ["success", "migration-failed", "success", "migration-failed",
                        "not-started", "not-started", "not-started", "not-started"]
    assert report["stopped_by"] == "max-failures" and report["not_started"] == 4
    assert versions(db, ["m4"]) == {"m4": []}


def test_tenants_lock_apart_and_two_fleets_at_once(tmp_path: Path, db, sql) -> None:
    """A held lock on one tenant's version table blocks that tenant only (exit 4 for it);
    two fleets over the same tenants at once apply every revision exactly once."""
    slow = [("r1", 'op.execute("SELECT pg_sleep(0.05)")\n'
                   'op.create_table("accounts", sa.Column("id", sa.BigInteger))'),
            ("r2", 'op.add_column("accounts", sa.Column("nick", sa.Text))')]
    project = tenant_project(tmp_path / "project", slow)
    tenants = [f"k{i}" for i in range(16)]
    create_schemas(db, tenants)
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    url = db.render_as_string(hide_password=False)
    with psycopg.connect(libpq(db), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.database, "k3",
                                                                "alembic_version"),))
        proc = spawn(fleet_args(project.ini, url, targets, tmp_path / "held", "--parallel", "2",
                                "--advisory-lock-wait", "0"))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err[-2000:]
    report = fleet_json(tmp_path / "held")
    assert report["counts"] == {"lock-busy": 1, "success": 15}
    assert by_name(report)["k3"]["exit_code"] == 4

    more = [f"j{i}" for i in range(16)]
    create_schemas(db, more)
    targets = tenants_yaml(tmp_path / "more.yaml", more)
    procs = [spawn(fleet_args(project.ini, url, targets, tmp_path / f"f{i}", "--parallel", "2",
                              "--advisory-lock-wait", "30s")) for i in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert [c for c, _ in results] == [0, 0], [e[-1500:] for _, e in results]
    applied: dict[str, list[str]] = {name: [] for name in more}
    for i in range(2):
        for entry in fleet_json(tmp_path / f"f{i}")["targets"]:
            applied[entry["name"]] += entry["applied"]
    assert all(sorted(revs) == ["r1", "r2"] for revs in applied.values()), applied
    assert all(v == ["r2"] for v in versions(db, more).values())


def test_sigterm_stops_starting_and_interrupts_the_running(tmp_path: Path, db, sql) -> None:
    slow = [("r1", 'op.create_table("accounts", sa.Column("id", sa.BigInteger))'),
            ("r2", 'op.execute("SELECT pg_sleep(30)")')]
    project = tenant_project(tmp_path / "project", slow)
    tenants = [f"g{i}" for i in range(10)]
    create_schemas(db, tenants)
    targets = tenants_yaml(tmp_path / "targets.yaml", tenants)
    proc = spawn(fleet_args(project.ini, db.render_as_string(hide_password=False), targets,
                            tmp_path / "art", "--parallel", "2"))
    deadline = time.monotonic() + 60
    while len(sql("SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                  "AND state = 'active'")) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-1500:]
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # to the parent only, as Kubernetes does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 8, err[-2000:]
    assert time.monotonic() - started < 20  # cancelled, not waited out
    report = fleet_json(tmp_path / "art")
    assert report["stopped_by"] == "interrupted" and report["exit_code"] == 8
    assert report["counts"] == {"interrupted": 2, "not-started": 8}, report["counts"]
    running = [t["name"] for t in report["targets"] if t["outcome"] == "interrupted"]
    found = versions(db, tenants)
    assert all(found[name] == ["r1"] for name in running)  # r2 rolled back
    assert all(found[t] == [] for t in tenants if t not in running)
    assert sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
               "(SELECT oid FROM pg_database WHERE datname = current_database())") == [(0,)]


def test_a_worker_that_dies_fails_its_target_alone(tmp_path: Path, db) -> None:
    """A worker killed under a target (the OOM killer, say): that target is exit 1, the worker
    is replaced, and every other target still runs. Targets from JSON lines."""
    dies = [("r1", 'op.create_table("accounts", sa.Column("id", sa.BigInteger))'),
            ("r2", "from alembic import context\n"
                   "if context.get_x_argument(as_dictionary=True)['tenant'] == 'w3':\n"
                   "    import signal\n"
                   "    os.kill(os.getpid(), signal.SIGKILL)")]
    project = tenant_project(tmp_path / "project", dies)
    tenants = [f"w{i}" for i in range(8)]
    create_schemas(db, tenants)
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(json.dumps({"name": t, "x": {"tenant": t}}) + "\n"
                               for t in tenants))
    proc = spawn(fleet_args(project.ini, db.render_as_string(hide_password=False), targets,
                            tmp_path / "art", "--parallel", "2"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    report = fleet_json(tmp_path / "art")
    assert report["counts"] == {"internal-error": 1, "success": 7}
    assert "worker process died (signal 9)" in by_name(report)["w3"]["error"]
    found = versions(db, tenants)
    assert found.pop("w3") == ["r1"]  # r2 rolled back with its session
    assert all(v == ["r2"] for v in found.values())
