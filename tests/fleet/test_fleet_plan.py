"""plan --targets: every target checked read-only, one plan per starting revision."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from fleet_support import create_schemas, tenant_project, tenants_yaml, versions
from support import libpq


def test_plan_groups_the_fleet_and_refuses_an_unknown_revision(
        tmp_path: Path, db, run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    project = tenant_project(tmp_path / "project")
    tenants = ["p1", "p2", "p3", "p4"]
    create_schemas(db, tenants)
    url = db.render_as_string(hide_password=False)
    assert run_cli(["upgrade", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(tenants_yaml(tmp_path / "one.yaml", ["p1"])), "--lint", "off",
                    "--artifacts-dir", str(tmp_path / "art"), "--no-schema-diff"]) == 0
    with psycopg.connect(libpq(db), autocommit=True) as conn:  # p4: a revision we do not have
        conn.execute('CREATE TABLE "p4".alembic_version (version_num varchar(32) PRIMARY KEY)')
        conn.execute("""INSERT INTO "p4".alembic_version VALUES ('gone')""")
    capsys.readouterr()
    everyone = tenants_yaml(tmp_path / "all.yaml", tenants)
    code = run_cli(["plan", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(everyone), "--lint", "off", "--format", "json"])
    assert code == 3
    out = capsys.readouterr().out
    doc = json.loads(out)
    groups = {tuple(g["current"]): g for g in doc["groups"]}
    assert groups[("r3",)]["targets"] == ["p1"] and groups[("r3",)]["pending"] == []
    assert groups[()]["targets"] == ["p2", "p3"]
    assert [p["revision"] for p in groups[()]["pending"]] == ["r1", "r2", "r3"]
    assert [r["name"] for r in doc["refused"]] == ["p4"] and doc["refused"][0]["exit_code"] == 3
    assert doc["at_target"] == 1 and doc["allowed"] is False
    assert versions(db, ["p2", "p3"]) == {"p2": [], "p3": []}  # nothing created
    code = run_cli(["plan", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(tenants_yaml(tmp_path / "ok.yaml", ["p1", "p2"])), "--lint", "off"])
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("fleet: 2 targets: 1 at the target, 1 to upgrade, 0 refused")
    assert "  from base (1 targets: p2):" in text and "upgrade would start" in text
