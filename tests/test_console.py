"""The console for people (--log-format console), and JSON left exactly as it was."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import time

import pytest
import structlog
from support import cli_args, open_transaction, run_dir

from runner import logging as runner_logging
from runner.embedded import bin_dir
from runner.main import main

R1 = '''"""create the accounts table"""
import sqlalchemy as sa
from alembic import op

revision = "r1"
down_revision = None


def upgrade():
    op.create_table("accounts", sa.Column("id", sa.BigInteger, primary_key=True))


def downgrade():
    op.drop_table("accounts")
'''
R2 = '''"""add a nickname to accounts"""
import sqlalchemy as sa
from alembic import op

revision = "r2"
down_revision = "r1"


def upgrade():
    op.add_column("accounts", sa.Column("nick", sa.Text))
{extra}

def downgrade():
    op.drop_column("accounts", "nick")
'''
FAILS = "    op.execute('SELECT * FROM nope_table')\n"


@pytest.fixture
def restore_structlog():
    """main(configure_logging=True) configures structlog for the process: put it back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _project(make_project, extra: str = ""):
    project = make_project([])
    (project.versions / "r1.py").write_text(R1)
    (project.versions / "r2.py").write_text(R2.format(extra=extra))
    return project


def _console_run(project, db, tmp_path, *extra: str) -> int:
    argv = [*cli_args(project, db, "--lint", "off", *extra, artifacts=tmp_path / "art"),
            "--pg-dump", str(bin_dir() / "pg_dump"), "--termination-log", str(tmp_path / "t")]
    argv[argv.index("json")] = "console"
    return main(argv)  # configures logging itself, on this (captured) stderr: not a terminal


def test_console_names_each_migration_and_ends_with_a_summary(
        make_project, db, tmp_path, capsys, restore_structlog):
    project = _project(make_project, FAILS)
    assert _console_run(project, db, tmp_path) == 5
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\x1b[" not in err  # not a terminal: no colour
    run_id = json.loads((run_dir(tmp_path / "art") / "run.json").read_text())["run_id"]
    # The header only (the artifacts path, DIR/<run-id>, names it too, as a path).
    assert err.replace(f"/{run_id}", "").count(run_id) == 1
    assert lines[0].startswith("safe-migrate ")
    assert any(line.startswith("✔ r1 create the accounts table  ") for line in lines), err
    failed = [line for line in lines if line.startswith("✖ r2 add a nickname to accounts")]
    assert len(failed) == 1 and "SQLSTATE 42P01" in failed[0], err
    # Under it: the line of the migration that raised (the path as a person types it).
    path = project.versions / "r2.py"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "nope" in text)
    shown = os.path.relpath(path)
    shown = str(path) if shown.startswith("..") else shown
    assert lines[lines.index(failed[0]) + 1] == f"    at {shown}:{line}", err
    summary = [line for line in lines if line.startswith("✖ migration-failed (exit 5): 1 applied")]
    assert len(summary) == 1 and f"artifacts: {tmp_path / 'art'}" in summary[0], err
    assert f"    safe-migrate upgrade -c {project.ini}" in lines  # the plan's next command


def test_the_console_shows_postgres_detail_under_the_failure(
        make_project, db, tmp_path, capsys, restore_structlog):
    project = _project(make_project, "    op.execute('INSERT INTO accounts VALUES (1), (1)')\n")
    assert _console_run(project, db, tmp_path) == 5
    lines = capsys.readouterr().err.splitlines()
    assert "    DETAIL: Key (id)=(1) already exists." in lines, lines


def test_a_lost_lock_race_is_a_warning_and_the_retry_says_when(
        make_project, db, tmp_path, capsys, restore_structlog):
    project = _project(make_project)
    assert _console_run(project, db, tmp_path, "r1") == 0
    capsys.readouterr()
    with open_transaction(db, "LOCK TABLE accounts IN ACCESS SHARE MODE", hold=1.0):
        code = _console_run(project, db, tmp_path, "--lock-timeout", "200ms",
                            "--lock-retries", "10")
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.splitlines()
    assert not [line for line in lines if line.startswith("✖")], err
    races = [line for line in lines if line.startswith("! r2 add a nickname to accounts")]
    assert any("lost a lock race: SQLSTATE 55P03" in line for line in races), err
    assert any("retry in" in line for line in races), err
    assert any(line.startswith("✔ r2 add a nickname to accounts") and "attempts" in line
               for line in lines), err
    # Not a terminal: no live status line, nor its cursor movements.
    assert "waiting for a lock held by" not in err and "lost a lock race to" not in err, err
    assert "\x1b[" not in err, err
    assert [line for line in lines if line.startswith("✔ success: 1 applied in ")], err


def test_json_lines_are_exactly_as_before(restore_structlog):
    stream = io.StringIO()
    runner_logging.configure("json", stream=stream)
    structlog.get_logger("safe-migrate").bind(run_id="R").info(
        "migration.done", revision="r1", duration_ms=12)
    record = json.loads(stream.getvalue())
    assert stream.getvalue() == json.dumps(
        {"run_id": "R", "revision": "r1", "duration_ms": 12, "event": "migration.done",
         "level": "info", "timestamp": record["timestamp"]}) + "\n"


def test_json_mode_does_not_import_rich(tmp_path):
    code = ("import sys; from runner.main import main; "
            "main(['status', '-c', sys.argv[1], '--log-format', 'json']); "
            "print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.ini")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run the CLI with a pseudo-terminal as its stderr; what it wrote there."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runner", *argv], stderr=terminal,
                            stdout=subprocess.DEVNULL, env=env)
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(controller)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_on_a_terminal_the_console_is_the_default_and_has_colour_unless_no_color(
        no_color, make_project, db, tmp_path):
    project = _project(make_project)
    argv = [*cli_args(project, db, "--lint", "off", artifacts=tmp_path / "art"),
            "--pg-dump", str(bin_dir() / "pg_dump"), "--termination-log", str(tmp_path / "t")]
    i = argv.index("--log-format")
    del argv[i:i + 2]  # auto: console on a terminal
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    if no_color:
        env["NO_COLOR"] = "1"
    out = _on_a_terminal(argv, env)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out).replace("\r", "")
    assert "✔ r1 create the accounts table" in plain, out
    assert "✔ r2 add a nickname to accounts" in plain, out
    assert "✔ success: 2 applied in" in plain, out
    # Colour (SGR 30-37, 90-97, 38;...): on a terminal, unless NO_COLOR (bold stays allowed).
    colours = re.findall(r"\x1b\[(?:\d+;)*(?:3[0-8]|9[0-7])(?:;\d+)*m", out)
    assert bool(colours) is (not no_color), out


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # SGR, cursor moves, erase-line


def test_on_a_terminal_a_live_line_shows_the_blocker_and_the_retry_countdown(
        make_project, db, tmp_path):
    project = _project(make_project)
    assert main(cli_args(project, db, "r1", "--lint", "off", "--no-schema-diff",
                         artifacts=tmp_path / "art"), configure_logging=False) == 0
    argv = [*cli_args(project, db, "--lint", "off", "--no-schema-diff", "--lock-timeout", "1s",
                      "--lock-retries", "20", artifacts=tmp_path / "art"),
            "--termination-log", str(tmp_path / "t")]
    argv[argv.index("json")] = "console"
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    env.update(TERM="xterm-256color", COLUMNS="300")
    lock = "LOCK TABLE accounts IN ACCESS SHARE MODE"
    with open_transaction(db, lock, hold=6.0) as pid:
        out = _on_a_terminal(argv, env)
    plain = _CONTROL.sub("", out)
    label = "r2 add a nickname to accounts"
    # While r2 waits: its elapsed time, and who it waits for (pid and query).
    assert re.search(rf"{label} · \d+\.\d s · waiting for a lock held by pid {pid}: {lock}",
                     plain), out
    # Between attempts: the countdown to the next one, and who won the race.
    assert re.search(rf"{label} · attempt \d+ in \d+\.\d s · lost a lock race to pid {pid}: "
                     f"{lock}", plain), out
    assert "✔ success: 1 applied in" in plain, out
    assert "\x1b[?25h" in out  # the cursor is shown again once the live line is gone


def test_json_on_a_terminal_has_no_live_line(make_project, db, tmp_path):
    project = _project(make_project)
    assert main(cli_args(project, db, "r1", "--lint", "off", "--no-schema-diff",
                         artifacts=tmp_path / "art"), configure_logging=False) == 0
    argv = [*cli_args(project, db, "--lint", "off", "--no-schema-diff", "--lock-timeout", "20s",
                      artifacts=tmp_path / "art"), "--termination-log", str(tmp_path / "t")]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "300"}
    with open_transaction(db, "LOCK TABLE accounts IN ACCESS SHARE MODE", hold=5.0):
        out = _on_a_terminal(argv, env)
    lines = [line for line in out.replace("\r", "").splitlines() if line]
    events = [json.loads(line) for line in lines]  # nothing but JSON lines, no escape codes
    assert "\x1b" not in out
    assert [e["event"] for e in events][-1] == "run.done" and events[-1]["exit_code"] == 0
    assert any(e["event"] == "migration.done" and e["lock_wait_ms"] > 0 for e in events), out
