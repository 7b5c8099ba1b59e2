"""GitHub Actions: the step summary in $GITHUB_STEP_SUMMARY and the ::error / ::warning
annotations, from real upgrades (GITHUB_ACTIONS=true) and from plain data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import cli_args, run_dir

from runner import github

R1 = "op.create_table('t1', sa.Column('name', sa.Text))"
R2_INDEX = "op.create_index('ix_t1_name', 't1', ['name'])"  # squawk: not CONCURRENTLY
R2_FAILS = "op.execute('SELECT * FROM nope_table')"


@pytest.fixture
def actions(tmp_path, monkeypatch):
    """A GitHub Actions step: its summary file (another step already wrote to it)."""
    summary = tmp_path / "step-summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return summary


def _def_upgrade_line(path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                if line.startswith("def upgrade("))


def _workflow_commands(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("::")]


def test_a_successful_upgrade_writes_its_summary_and_warns_on_lint_findings(
        actions, make_project, db, run_cli, capsys, tmp_path, monkeypatch):
    project = make_project([("r1", R1), ("r2", R2_INDEX)])
    monkeypatch.setenv("GITHUB_WORKSPACE", str(project.root))
    art = tmp_path / "art"
    assert run_cli(cli_args(project, db, "--lint", "warn", artifacts=art)) == 0

    commands = _workflow_commands(capsys.readouterr().out)
    line = _def_upgrade_line(project.versions / "r2.py")
    assert commands and all(c.startswith(f"::warning file=versions/r2.py,line={line},title="
                                         "squawk ") for c in commands), commands
    assert any("require-concurrent-index-creation" in c for c in commands)

    summary = actions.read_text()
    assert summary.startswith("# earlier step\n")  # appended, not overwritten
    assert "### safe-migrate upgrade: success (exit 0)" in summary and "2 applied" in summary
    run = json.loads((run_dir(art) / "run.json").read_text())
    for m in run["migrations"]:
        assert (f"| ✅ | `{m['revision']}` | `versions/{m['revision']}.py` | yes | 1 "
                f"| {m['duration_ms']} ms | applied |") in summary
    assert "**Lint**: 1 finding(s)" in summary
    assert "`require-concurrent-index-creation`" in summary
    assert "Recovery plan" not in summary


def test_a_failed_migration_is_an_error_on_its_file_and_the_plan_is_in_the_summary(
        actions, make_project, db, run_cli, capsys, tmp_path, monkeypatch):
    project = make_project([("r1", R1), ("r2", R2_FAILS)])
    monkeypatch.setenv("GITHUB_WORKSPACE", str(project.root))
    art = tmp_path / "art"
    assert run_cli(cli_args(project, db, "--lint", "off", artifacts=art)) == 5

    commands = _workflow_commands(capsys.readouterr().out)
    line = _def_upgrade_line(project.versions / "r2.py") + 1  # the op.execute that raised
    assert len(commands) == 1, commands
    assert commands[0].startswith(
        f"::error file=versions/r2.py,line={line},title=safe-migrate%3A migration r2 failed::"
        "SQLSTATE 42P01: ")
    assert "nope_table" in commands[0]

    summary = actions.read_text()
    plan = json.loads((run_dir(art) / "recovery-plan.json").read_text())
    assert "### safe-migrate upgrade: migration-failed (exit 5)" in summary
    assert "| ❌ | `r2` | `versions/r2.py` |" in summary and "1 applied" in summary
    assert (f"**Error:** migration r2 ({project.versions / 'r2.py'}:{line}) failed and was "
            "rolled back") in summary
    assert f"**Recovery plan** (`{plan['status']}`)" in summary
    assert "\n".join(["```sh", *plan["commands"], "```"]) in summary


def test_lint_error_mode_annotates_errors_and_summarizes_the_refusal(
        actions, make_project, db, run_cli, capsys, monkeypatch):
    project = make_project([("r1", R1), ("r2", R2_INDEX)])
    monkeypatch.setenv("GITHUB_WORKSPACE", str(project.root))
    assert run_cli(cli_args(project, db, "--lint", "error", "--no-schema-diff")) == 3
    commands = _workflow_commands(capsys.readouterr().out)
    assert commands and all(c.startswith("::error file=versions/r2.py,") for c in commands)
    assert "### safe-migrate upgrade: refused by lint (exit 3)" in actions.read_text()


def test_a_summary_that_cannot_be_written_changes_nothing(make_project, db, run_cli, capsys,
                                                          tmp_path, monkeypatch, logs):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a directory: open() fails
    project = make_project([("r1", R1)])
    assert run_cli(cli_args(project, db, "--lint", "off", "--no-schema-diff",
                            artifacts=tmp_path / "art")) == 0
    assert [e["event"] for e in logs if e["event"].startswith("github.")] == [
        "github.summary_failed"]


def test_outside_github_actions_nothing_is_written(make_project, db, run_cli, capsys, tmp_path,
                                                   monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    project = make_project([("r1", R1), ("r2", R2_FAILS)])
    assert run_cli(cli_args(project, db, "--lint", "off", "--no-schema-diff",
                            artifacts=tmp_path / "art")) == 5
    assert _workflow_commands(capsys.readouterr().out) == []
    assert not (tmp_path / "summary.md").exists()


# -- plain data -----------------------------------------------------------------------------

def test_workflow_command_escaping_follows_github_s_rules():
    # Data: % CR LF; properties also : and , (actions/toolkit's escapeData/escapeProperty).
    assert github.escape_data("50% done\r\nnext: a, b") == "50%25 done%0D%0Anext: a, b"
    assert github.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert github.command("error", "boom\nline 2", file="v/a,b.py", line=7, title="x: y") == (
        "::error file=v/a%2Cb.py,line=7,title=x%3A y::boom%0Aline 2")
    assert github.command("warning", "plain") == "::warning::plain"


def test_a_run_failing_outside_any_migration_is_one_error_without_a_file(tmp_path):
    run = {"exit_code": 4, "outcome": "lock-busy", "error": "advisory lock held by pid 7",
           "migrations": [], "pending": ["r1"]}
    assert github.run_annotations(run, None, tmp_path) == [
        "::error title=safe-migrate upgrade%3A lock-busy::advisory lock held by pid 7"]


def test_the_summary_keeps_table_cells_on_one_line(tmp_path):
    run = {"run_id": "x", "outcome": "migration-failed", "exit_code": 5, "target": "heads",
           "database_url": "postgresql+psycopg://u@h/d", "started_at": "2026-01-01T00:00:00+00:00",
           "ended_at": "2026-01-01T00:00:01.5+00:00", "error": "boom", "pending": [],
           "migrations": [{"revision": "r1", "path": str(tmp_path / "versions" / "r1.py"),
                           "transactional": False, "attempts": 2, "duration_ms": 12,
                           "outcome": "failed",
                           "error": {"sqlstate": "23505", "message": "a | b\nc"}}]}
    text = github.summary_markdown(run, None, [], tmp_path)
    assert ("| ❌ | `r1` | `versions/r1.py` | no | 2 | 12 ms "
            "| failed: SQLSTATE 23505: a \\| b c |") in text
    assert "1.50 s" in text and "0 applied" in text


def test_an_annotation_goes_on_the_line_that_raised_with_detail_and_hint(tmp_path):
    helper = tmp_path / "versions" / "helpers.py"
    run = {"exit_code": 5, "migrations": [{
        "revision": "r2", "outcome": "failed", "path": str(tmp_path / "versions" / "r2.py"),
        "error": {"sqlstate": "23505", "message": "duplicate key value", "file": str(helper),
                  "line": 7, "detail": "Key (id)=(1) already exists.", "hint": "Try again"}}]}
    (annotation,) = github.run_annotations(run, None, tmp_path)
    assert annotation.startswith("::error file=versions/helpers.py,line=7,title=")
    assert annotation.endswith("::SQLSTATE 23505: duplicate key value%0ADETAIL: Key (id)=(1) "
                               "already exists.%0AHINT: Try again")
    summary = github.summary_markdown(run, None, [], tmp_path)
    assert "failed: SQLSTATE 23505: duplicate key value; DETAIL: Key (id)=(1) already " \
           "exists.; HINT: Try again |" in summary
