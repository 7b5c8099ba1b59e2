"""status --targets: how many targets are at head, behind, failed, partial."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from fleet_support import create_schemas, tenant_project, tenants_yaml
from support import libpq


def test_status_counts_the_fleet(tmp_path: Path, db, run_cli,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = ["a1", "a2", "b1", "f1", "n1"]
    create_schemas(db, tenants)
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute('CREATE TABLE "f1".accounts (id int)')  # its r1 fails: exit 5
    url = db.render_as_string(hide_password=False)
    migrate = tenants_yaml(tmp_path / "some.yaml", ["a1", "a2", "f1"])
    assert run_cli(["upgrade", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(migrate), "--artifacts-dir", str(tmp_path / "art"), "--lint", "off",
                    "--no-schema-diff"]) == 5
    capsys.readouterr()
    # b1 is one revision behind: migrated to r2 only.
    assert run_cli(["upgrade", "r2", "-c", str(project.ini), "--database-url", url,
                    "-x", "tenant=b1", "--artifacts-dir", str(tmp_path / "art"),
                    "--lint", "off", "--no-schema-diff"]) == 0
    capsys.readouterr()
    everyone = tenants_yaml(tmp_path / "all.yaml", tenants)
    code = run_cli(["status", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(everyone), "--format", "json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"at-head": 2, "behind": 2, "failed": 1}
    states = {t["name"]: t for t in report["targets"]}
    assert states["f1"]["state"] == "failed" and states["f1"]["last_run"]["exit_code"] == 5
    assert states["b1"]["current"] == ["r2"] and states["b1"]["pending_count"] == 1
    assert states["n1"]["current"] == [] and states["n1"]["pending_count"] == 3
    code = run_cli(["status", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(everyone)])
    out = capsys.readouterr().out
    assert out.startswith("fleet: 5 targets: 2 at-head, 2 behind, 1 failed")
    assert "  f1: failed: at base, 3 pending, last run migration-failed" in out


def test_status_shows_a_tenant_left_half_applied_as_partial(tmp_path: Path, db, run_cli,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    project = tenant_project(tmp_path / "project", [
        ("r1", 'op.create_table("accounts", sa.Column("email", sa.Text))'),
        ("r2", "with op.get_context().autocommit_block():\n"
               '    op.create_index("ux_email", "accounts", ["email"], unique=True,\n'
               "                    postgresql_concurrently=True)")])
    create_schemas(db, ["ok1", "p1"])
    url = db.render_as_string(hide_password=False)
    fleet = tenants_yaml(tmp_path / "fleet.yaml", ["ok1", "p1"])
    common = ["-c", str(project.ini), "--database-url", url, "--targets", str(fleet),
              "--artifacts-dir", str(tmp_path / "art"), "--lint", "off", "--no-schema-diff"]
    assert run_cli(["upgrade", "r1", *common]) == 0
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute("INSERT INTO p1.accounts VALUES ('a@x'), ('a@x')")  # r2 fails: INVALID
    assert run_cli(["upgrade", *common]) == 6
    capsys.readouterr()
    assert run_cli(["status", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(fleet), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"at-head": 1, "partial": 1}
    assert {t["name"]: t["state"] for t in report["targets"]} == {"ok1": "at-head",
                                                                   "p1": "partial"}
