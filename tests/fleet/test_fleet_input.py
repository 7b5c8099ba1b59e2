"""Bad targets and fleet options: exit 2, one line, never a URL's password."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_support import tenant_project

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(("content", "message"), [
    ("", "no targets"),
    ("- name: a\n- name: a\n", "listed twice"),
    ("- name: ../up\n", "name must be"),
    ("- {name: a, url: 'postgresql://u:" + SECRET + "@h/db', url_env: X}\n", "give one of"),
    ("- {name: a, url: 'mysql://u:" + SECRET + "@h/db'}\n", "runs on PostgreSQL"),
    ("- {name: a, url_env: SM_TEST_UNSET_VARIABLE}\n", "SM_TEST_UNSET_VARIABLE"),
    ("- {name: a, url_file: /nonexistent/url}\n", "url_file /nonexistent/url"),
    ("- {name: a, x: [1, 2]}\n", "x must be a mapping"),
    ("- {name: a, port: 5}\n", "unknown field(s) port"),
    ("name: a\n", "expected a YAML list"),
    ('{"name": "a"}\n{"name": \n', ":2: not a JSON object"),
    ("- name: [a\n", "targets.yaml:2: expected"),
])
def test_bad_targets_file(tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str],
                          content: str, message: str) -> None:
    project = tenant_project(tmp_path / "project")
    targets = tmp_path / "targets.yaml"
    targets.write_text(content)
    code = run_cli(["upgrade", "-c", str(project.ini), "--targets", str(targets),
                    "--database-url", "postgresql://u@127.0.0.1:1/none",
                    "--artifacts-dir", str(tmp_path / "art"), "--log-format", "console"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert SECRET not in err
    assert not (tmp_path / "art").exists()  # refused before anything


@pytest.mark.parametrize("extra", [["--parallel", "4"], ["--canary", "2"],
                                   ["--max-failures", "1"], ["--shard", "0/2"],
                                   ["--fleet-snapshots"]])
def test_fleet_options_need_targets(tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str],
                                    extra: list[str]) -> None:
    project = tenant_project(tmp_path / "project")
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url",
                    "postgresql://u@127.0.0.1:1/none", "--log-format", "console", *extra])
    assert code == 2
    assert "needs --targets" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--parallel", "0"], "--parallel: must be at least 1"),
    (["--max-failures", "0"], "--max-failures: must be at least 1"),
    (["--canary", "x"], "--canary: expected a whole number"),
    (["--shard", "2/2"], "--shard: expected I/N"),
    (["--embedded"], "--embedded"),
])
def test_bad_fleet_options(tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str],
                           extra: list[str], message: str) -> None:
    project = tenant_project(tmp_path / "project")
    targets = tmp_path / "targets.yaml"
    targets.write_text("- name: a\n")
    code = run_cli(["upgrade", "-c", str(project.ini), "--targets", str(targets),
                    "--database-url", "postgresql://u@127.0.0.1:1/none",
                    "--log-format", "console", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_targets_from_a_query_on_the_control_database(tmp_path: Path, db, sql,
                                                      run_cli) -> None:
    from fleet_support import create_schemas, fleet_json, versions

    project = tenant_project(tmp_path / "project")
    create_schemas(db, ["q1", "q2", "q3"])
    sql("CREATE TABLE public.tenants (name text, active bool)")
    sql("INSERT INTO public.tenants VALUES ('q1', true), ('q2', false), ('q3', true)")
    url = db.render_as_string(hide_password=False)
    query = ("SELECT name, jsonb_build_object('tenant', name) AS x FROM public.tenants "
             "WHERE active ORDER BY name")
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url", url,
                    "--targets-query", query, "--artifacts-dir", str(tmp_path / "art"),
                    "--lint", "off", "--no-schema-diff"])
    assert code == 0
    report = fleet_json(tmp_path / "art")
    assert [t["name"] for t in report["targets"]] == ["q1", "q3"]
    assert versions(db, ["q1", "q2", "q3"]) == {"q1": ["r3"], "q2": [], "q3": ["r3"]}
    # It runs READ ONLY: a query that writes is refused, and nothing was written.
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url", url,
                    "--targets-query", "DELETE FROM public.tenants RETURNING name",
                    "--artifacts-dir", str(tmp_path / "art2"), "--lint", "off"])
    assert code == 2
    assert sql("SELECT count(*) FROM public.tenants") == [(3,)]


def test_snapshots_on_request_and_an_empty_shard(tmp_path: Path, db, run_cli) -> None:
    from fleet_support import create_schemas, fleet_json, tenants_yaml

    from runner.fleet.shard import Shard

    project = tenant_project(tmp_path / "project")
    create_schemas(db, ["s1", "s2"])
    url = db.render_as_string(hide_password=False)
    targets = tenants_yaml(tmp_path / "t.yaml", ["s1", "s2"])
    assert run_cli(["upgrade", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(targets), "--fleet-snapshots", "--lint", "off",
                    "--artifacts-dir", str(tmp_path / "art")]) == 0
    report = fleet_json(tmp_path / "art")
    folder = Path(report["targets"][0]["artifacts"])
    assert "accounts" in (folder / "schema.diff").read_text()
    # A shard that owns none of the targets: nothing to do, exit 0, an empty report.
    count = 64
    empty = next(i for i in range(count) if not any(Shard(i, count).owns(t)
                                                    for t in ("s1", "s2")))
    assert run_cli(["upgrade", "-c", str(project.ini), "--database-url", url, "--targets",
                    str(targets), "--shard", f"{empty}/{count}", "--lint", "off",
                    "--artifacts-dir", str(tmp_path / "art2")]) == 0
    report = fleet_json(tmp_path / "art2")
    assert report["targets"] == [] and report["targets_total"] == 2 and report["exit_code"] == 0


def test_an_env_py_looping_over_tenants_is_refused_per_target(tmp_path: Path, db,
                                                               run_cli) -> None:
    """env.py's shape is checked by a full probe until one target passes it: a loop over
    tenants in one env.py run is refused (exit 2) for every target, and nothing is created."""
    from fleet_support import REVISIONS, create_schemas, fleet_json, versions
    from support import write_project

    project = write_project(tmp_path / "project", REVISIONS, "tenant-loop")
    create_schemas(db, ["l1", "l2", "l3", "l4"])
    targets = tmp_path / "t.yaml"
    targets.write_text("- {name: a, x: {tenants: 'l1,l2'}}\n- {name: b, x: {tenants: 'l3,l4'}}\n")
    code = run_cli(["upgrade", "-c", str(project.ini), "--database-url",
                    db.render_as_string(hide_password=False), "--targets", str(targets),
                    "--lint", "off", "--artifacts-dir", str(tmp_path / "art")])
    assert code == 2
    report = fleet_json(tmp_path / "art")
    assert [t["exit_code"] for t in report["targets"]] == [2, 2]
    assert "more than one database or version table" in report["targets"][1]["error"]
    assert versions(db, ["l1", "l2", "l3", "l4"]) == {"l1": [], "l2": [], "l3": [], "l4": []}
