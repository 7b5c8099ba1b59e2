"""`safe-migrate upgrade --lint` against a real PostgreSQL: lint cannot be bypassed (issue 14)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from support import (
    CREATE_ACCOUNTS,
    INDEX_EMAIL,
    READS_ROWS,
    MakeProject,
    chained,
    cli_args,
    version_of,
)

ADD_NICK = '''
def upgrade():
    op.add_column("accounts", sa.Column("nick", sa.Text, nullable=True))


def downgrade():
    op.drop_column("accounts", "nick")
'''


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_lint_error_refuses_a_range_with_an_unrenderable_revision(
        make_project: MakeProject, db, sql, run_cli, logs, capsys) -> None:
    project = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", READS_ROWS), ("r3", ADD_NICK)]))
    code = run_cli(cli_args(project, db, "--lint", "error", "--no-schema-diff"))
    assert code == 3
    assert version_of(sql) == []  # nothing ran
    [finding] = _events(logs, "lint.finding")
    assert finding["revision"] == "r2" and finding["rule"] == "unrenderable"
    assert finding["path"].endswith("/versions/r2.py")
    assert "object has no attribute" in finding["message"]
    assert not _events(logs, "lint.unavailable")
    error = capsys.readouterr().err
    assert "r2 (" in error and "unrenderable" in error and "AttributeError" in error


def test_the_opt_out_lets_an_unrenderable_revision_run(
        make_project: MakeProject, db, sql, run_cli, logs) -> None:
    opted_out = "# safe-migrate: ignore=unrenderable\n" + READS_ROWS
    project = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", opted_out), ("r3", ADD_NICK)]))
    assert run_cli(cli_args(project, db, "--lint", "error", "--no-schema-diff")) == 0
    assert version_of(sql) == ["r3"]
    assert _events(logs, "lint.done")[0]["findings"] == 0


def test_lint_warn_reports_an_unrenderable_revision_and_runs(
        make_project: MakeProject, db, sql, run_cli, logs) -> None:
    project = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", READS_ROWS), ("r3", INDEX_EMAIL)]))
    assert run_cli(cli_args(project, db, "--no-schema-diff")) == 0  # --lint warn: the default
    assert version_of(sql) == ["r3"]
    rules = [(e["revision"], e["rule"], e["level"]) for e in _events(logs, "lint.finding")]
    assert rules == [("r2", "unrenderable", "warning"),
                     ("r3", "require-concurrent-index-creation", "warning")]


def test_lint_error_refuses_a_blocking_index_on_an_existing_table(
        make_project: MakeProject, db, sql, run_cli, logs, capsys) -> None:
    project = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS),
                                                    ("r2", INDEX_EMAIL)]))
    assert run_cli(cli_args(project, db, "r1", "--lint", "off", "--no-schema-diff")) == 0
    sql("INSERT INTO accounts (email) SELECT 'a' || g FROM generate_series(1, 100) g")
    code = run_cli(cli_args(project, db, "--lint", "error", "--no-schema-diff"))
    assert code == 3 and version_of(sql) == ["r1"]
    [finding] = _events(logs, "lint.finding")
    assert finding["rule"] == "require-concurrent-index-creation"
    assert finding["revision"] == "r2" and finding["path"].endswith("/versions/r2.py")
    assert finding["statement"] == "CREATE INDEX ix_accounts_email ON accounts (email);"
    error = capsys.readouterr().err  # the one error line names revision, file and statement
    assert "r2 (" in error and "/versions/r2.py" in error
    assert "`CREATE INDEX ix_accounts_email ON accounts (email);`" in error


@contextlib.contextmanager
def _late_port(target: tuple[str, int], delay: float) -> Iterator[int]:
    """A local port that refuses connections for `delay` seconds, then forwards to `target`:
    a database that is unreachable for a moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        if stop.wait(delay):
            return
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(target)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()


def test_the_lint_step_retries_an_unreachable_database(
        make_project: MakeProject, db, sql, run_cli, logs) -> None:
    project = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS)]))
    with _late_port((db.host or "127.0.0.1", db.port or 5432), delay=1.5) as port:
        late = db.set(host="127.0.0.1", port=port)
        started = time.monotonic()
        code = run_cli(cli_args(project, late, "--lint", "warn", "--no-schema-diff",
                                "--connect-timeout", "30s"))
    assert code == 0, logs
    assert time.monotonic() - started >= 1.5
    assert version_of(sql) == ["r1"]
    assert _events(logs, "lint.done")
