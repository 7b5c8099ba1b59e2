"""The database password never leaks: not to stdout/stderr, artifacts, recovery plans, the
termination log, pg_dump's argv or any child process's argv; artifacts are owner-only.

Runs `python -m runner upgrade` as a child process against a password-protected embedded
PostgreSQL 18, with a pg_dump wrapper that records how it was called.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL
from support import libpq, run_dir, write_project

from runner.embedded import EmbeddedPostgres, bin_dir

PASSWORD = "Zebra-Secret-9431"
WRONG_PASSWORD = "Wrong-Zebra-1177"


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database(pg: EmbeddedPostgres) -> Iterator[URL]:
    name = f"sm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(pg.url("postgres")), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg.url(name)
    finally:
        with psycopg.connect(libpq(pg.url("postgres")), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A `pg_dump` that appends its argv (as /proc sees it) to a log and execs the real one."""
    log = tmp_path / "pg_dump-argv.log"
    script = tmp_path / "bin" / "pg_dump"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$0 $*\" >> '{log}'\n"
        f"tr '\\000' ' ' < /proc/$$/cmdline >> '{log}'\n"
        f"echo >> '{log}'\n"
        f"exec '{bin_dir() / 'pg_dump'}' \"$@\"\n")
    script.chmod(0o755)
    return script, log


OK_REVS = [
    ("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))\n"
           "op.execute('SELECT pg_sleep(0.5)')"),
    ("r2", "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"),
]
FAILING_REVS = [
    *OK_REVS,
    ("r3", "op.create_table('t3', sa.Column('id', sa.Integer, primary_key=True))\n"
           "op.execute('SELECT pg_sleep(0.5)')\n"
           "op.execute('SELECT * FROM no_such_table')"),
]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    child_argvs: list[str]  # every descendant's /proc/<pid>/cmdline seen during the run


def _ppid(pid: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])


def _watch_children(root: int, stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        family = {root}
        entries = [p for p in os.listdir("/proc") if p.isdigit()]
        # A few passes reach runner -> sh wrapper -> pg_dump whatever the listing order.
        for _ in range(3):
            for pid in entries:
                if int(pid) not in family and _ppid(pid) in family:
                    family.add(int(pid))
        for pid in family - {root}:
            with contextlib.suppress(OSError):
                seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                            .decode(errors="replace"))
        time.sleep(0.01)


def run_runner(args: list[str], env: dict[str, str] | None = None) -> Result:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "DATABASE_URL_FILE")}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_children, args=(proc.pid, stop, seen))
    watcher.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join()
    return Result(proc.returncode, out, err, seen)


def common_args(project, wrapper_path: Path, artifacts: Path, tmp_path: Path) -> list[str]:
    return ["upgrade", "-c", str(project.ini), "--log-format", "json", "--artifacts-dir",
            str(artifacts), "--pg-dump", str(wrapper_path), "--termination-log",
            str(tmp_path / "termination-log")]


def assert_no_secret(result: Result, artifacts: Path, tmp_path: Path, pg_dump_log: Path | None,
                     secrets: tuple[str, ...] = (PASSWORD,)) -> None:
    for secret in secrets:
        for line in result.stdout.splitlines() + result.stderr.splitlines():
            assert secret not in line, line
        for path in artifacts.rglob("*"):
            if path.is_file():
                assert secret not in path.read_text(errors="replace"), path
        termination = tmp_path / "termination-log"
        if termination.exists():
            assert secret not in termination.read_text()
        if pg_dump_log is not None and pg_dump_log.exists():
            assert secret not in pg_dump_log.read_text()
        for argv in result.child_argvs:
            assert secret not in argv, argv


def assert_owner_only(artifacts: Path) -> None:
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    assert stat.S_IMODE(artifacts.stat().st_mode) & 0o077 == 0, oct(artifacts.stat().st_mode)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_failing_run_with_url_flag_leaks_nothing(database, wrapper, tmp_path):
    script, log = wrapper
    project = write_project(tmp_path / "project", FAILING_REVS)
    artifacts = tmp_path / "artifacts"
    url = database.render_as_string(hide_password=False)
    assert PASSWORD in url
    result = run_runner([*common_args(project, script, artifacts, tmp_path),
                         "--database-url", url])
    assert result.code == 5, result.stderr
    assert (run_dir(artifacts) / "recovery-plan.json").is_file()
    assert (run_dir(artifacts) / "recovery-plan.md").is_file()
    assert (run_dir(artifacts) / "schema-before.sql").is_file()
    # The wrapper really ran (so its argv was checked), and so did we see children.
    assert log.exists() and "--schema-only" in log.read_text()
    assert any("pg_dump" in argv for argv in result.child_argvs)
    assert any(e["event"] == "recovery.plan" for e in events(result.stderr))
    assert_no_secret(result, artifacts, tmp_path, log)
    assert_owner_only(artifacts)
    with psycopg.connect(libpq(database), autocommit=True) as conn:  # the run ledger too
        rows = conn.execute("SELECT row_to_json(r)::text FROM safe_migrate_runs r").fetchall()
    assert rows and "***" in rows[0][0] and not any(PASSWORD in row[0] for row in rows)


def test_successful_run_with_url_flag_leaks_nothing(database, wrapper, tmp_path):
    script, log = wrapper
    project = write_project(tmp_path / "project", OK_REVS)
    artifacts = tmp_path / "artifacts"
    result = run_runner([*common_args(project, script, artifacts, tmp_path), "--database-url",
                         database.render_as_string(hide_password=False)])
    assert result.code == 0, result.stderr
    run = run_dir(artifacts)
    assert (run / "run.json").is_file() and (run / "schema.diff").is_file()
    assert log.exists() and "--schema-only" in log.read_text()
    assert_no_secret(result, artifacts, tmp_path, log)
    assert_owner_only(artifacts)


def test_database_url_env_var_leaks_nothing(database, wrapper, tmp_path):
    script, log = wrapper
    project = write_project(tmp_path / "project", FAILING_REVS)
    artifacts = tmp_path / "artifacts"
    result = run_runner(common_args(project, script, artifacts, tmp_path),
                        env={"DATABASE_URL": database.render_as_string(hide_password=False)})
    assert result.code == 5, result.stderr
    assert (run_dir(artifacts) / "recovery-plan.json").is_file()
    assert log.exists()
    assert_no_secret(result, artifacts, tmp_path, log)
    assert_owner_only(artifacts)


def test_database_url_file_leaks_nothing(database, wrapper, tmp_path):
    script, log = wrapper
    project = write_project(tmp_path / "project", OK_REVS)
    artifacts = tmp_path / "artifacts"
    secret_file = tmp_path / "secret-url"
    secret_file.write_text(database.render_as_string(hide_password=False) + "\n")
    secret_file.chmod(0o600)
    result = run_runner(common_args(project, script, artifacts, tmp_path),
                        env={"DATABASE_URL_FILE": str(secret_file)})
    assert result.code == 0, result.stderr
    assert log.exists()
    assert_no_secret(result, artifacts, tmp_path, log)
    assert_owner_only(artifacts)


def test_wrong_password_error_names_neither_password(database, wrapper, tmp_path):
    script, log = wrapper
    project = write_project(tmp_path / "project", OK_REVS)
    artifacts = tmp_path / "artifacts"
    url = database.set(password=WRONG_PASSWORD).render_as_string(hide_password=False)
    result = run_runner([*common_args(project, script, artifacts, tmp_path),
                         "--database-url", url, "--connect-timeout", "1s"])
    assert result.code == 7, result.stderr
    errors = [e for e in events(result.stderr) if e["event"] == "error"]
    assert len(errors) == 1 and "password authentication failed" in errors[0]["message"]
    assert_no_secret(result, artifacts, tmp_path, log, secrets=(PASSWORD, WRONG_PASSWORD))
