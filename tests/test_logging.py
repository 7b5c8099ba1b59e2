"""runner.logging: the configured processors as they run on every event, and our output is
ours: whatever env.py does to `logging` or structlog, safe-migrate's events keep their format
and stream (JSON lines on stderr with --log-format json)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from support import GENERIC_ENV, cli_args, spawn, version_of

from runner import logging as runner_logging


@pytest.fixture
def json_output() -> Iterator[io.StringIO]:
    """Events rendered by the real configuration (not capture_logs), into a buffer."""
    saved = structlog.get_config()
    stream = io.StringIO()
    runner_logging.configure("json", stream=stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)


def test_secrets_are_masked_in_nested_values(json_output: io.StringIO) -> None:
    blockers = [{"pid": 7, "query": "SELECT dblink('host=h password=Secret9 dbname=x')"},
                {"pid": 8, "query": "-- postgresql://app:Secret9@db/prod"}]
    runner_logging.get_logger().warning(
        "migration.retry", blockers=blockers, detail={"urls": ("postgresql://u:Secret9@h/d",)},
        error="password=Secret9")
    line = json_output.getvalue()
    assert "Secret9" not in line
    event = json.loads(line)
    assert event["blockers"][0] == {
        "pid": 7, "query": "SELECT dblink('host=h password=*** dbname=x')"}
    assert event["blockers"][1]["query"] == "-- postgresql://app:***@db/prod"
    assert event["detail"] == {"urls": ["postgresql://u:***@h/d"]}
    assert "Secret9" in blockers[0]["query"]  # the caller's own data is left alone


# env.py takes over structlog (a console renderer, on stdout: structlog's default logger) and
# the stdlib root logger (DEBUG, on stderr), then logs through both, as real ones do.
TAKEOVER = '''
import logging
import structlog

structlog.configure(processors=[structlog.processors.add_log_level,
                                structlog.dev.ConsoleRenderer(colors=False)],
                    cache_logger_on_first_use=True)
logging.basicConfig(level=logging.DEBUG)
structlog.get_logger("app").info("env.py loaded", via="structlog")
logging.getLogger("app").info("env.py loaded via logging")
'''

MIGRATION = ("import logging, structlog\n"
             "structlog.get_logger('app').info('migrating', via='structlog')\n"
             "logging.getLogger('app').warning('migrating via logging')\n"
             "op.create_table('t1', sa.Column('id', sa.Integer))")


def test_env_py_taking_over_logging_leaves_stderr_json_lines(make_project, db, sql, tmp_path):
    project = make_project([("r1", MIGRATION), ("r2", "op.execute('SELECT 1')")])
    (project.root / "env.py").write_text(TAKEOVER + GENERIC_ENV)
    proc = spawn(cli_args(project, db, artifacts=tmp_path / "a"))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.strip().splitlines()]  # each line parses
    ours = [e for e in events if "run_id" in e]
    names = [e["event"] for e in ours]
    assert names[0] == "run.start" and names[-1] == "run.done"
    assert [e["revision"] for e in ours if e["event"] == "migration.done"] == ["r1", "r2"]
    assert all({"level", "timestamp"} <= set(e) for e in ours)
    assert version_of(sql) == ["r2"]
    assert "run.done" not in stdout  # none of ours went through env.py's renderer


def test_our_loggers_made_after_env_py_configured_structlog_stay_ours(
        make_project, db, tmp_path):
    """status logs its event after env.py ran (and took over structlog's configuration)."""
    project = make_project([("r1", "op.execute('SELECT 1')")])
    (project.root / "env.py").write_text(TAKEOVER + GENERIC_ENV)
    proc = spawn(cli_args(project, db, command="status"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.strip().splitlines()]  # each line parses
    status = [e for e in events if e["event"] == "status"]
    assert len(status) == 1 and {"level", "timestamp"} <= set(status[0])
    # What env.py and the migrations wrote to stderr is there, each line an event of its own.
    assert any(e["event"] == "output" and "env.py loaded" in e["text"] for e in events)


def test_json_lines_wraps_other_output_line_by_line():
    import io

    from runner.logging import JsonLines

    out = io.StringIO()
    stream = JsonLines(out)
    stream.write('plain text\n{"event": "theirs"}\npart')
    stream.write("ial postgresql://u:secret@h/db\n")
    stream.write("no newline yet")
    stream.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("text", line["event"]) for line in lines] == [
        "plain text", "theirs", "partial postgresql://u:***@h/db", "no newline yet"]
    assert all(line["event"] == "output" for line in (lines[0], lines[2], lines[3]))
