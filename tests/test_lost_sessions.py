"""Sessions lost under a running upgrade, table-driven: each has its documented exit code
(never 1, "a bug"), one error line, and never a migration run without the lock.

Each case spawns `safe-migrate upgrade` as a child process, does something to the server or
to one of the runner's sessions while it runs, and returns the child's exit code and events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL
from support import MakeProject, Project, cli_args, json_events, libpq, spawn

from runner.db.lock import lock_key
from runner.embedded import EmbeddedPostgres

SLEEPY = [("r1", "op.execute('SELECT pg_sleep(2.5)')"),
          ("r2", "op.create_table('t2', sa.Column('id', sa.Integer))")]


@dataclass
class Ctx:
    tmp_path: Path
    db: URL
    sql: Callable[..., list[tuple[Any, ...]]]
    make_project: MakeProject
    request: pytest.FixtureRequest

    def run(self, project: Project, db: URL, during: Callable[[], None],
            ready: str, *extra: str) -> tuple[int, list[dict[str, Any]]]:
        """Run upgrade; once `ready` (a query on db) returns a row, call `during`."""
        proc = spawn(cli_args(project, db, "--lint", "off", "--no-schema-diff", *extra,
                              artifacts=self.tmp_path / "a"))
        deadline = time.monotonic() + 60
        while not _rows(db, ready):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        during()
        _, stderr = proc.communicate(timeout=120)
        return proc.returncode, json_events(stderr)


def _rows(db: URL, query: str) -> list[tuple[Any, ...]]:
    try:
        with psycopg.connect(libpq(db), autocommit=True) as conn:
            cur = conn.execute(query)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []
    except psycopg.OperationalError:
        return []  # the server is restarting


IN_R1 = ("SELECT 1 FROM pg_stat_activity WHERE application_name = 'safe-migrate-migration' "
         "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'")


def monitor_killed(ctx: Ctx) -> tuple[int, list[dict[str, Any]]]:
    """The runner's monitor/catalog session is terminated while r1 runs."""
    project = ctx.make_project(SLEEPY)
    return ctx.run(project, ctx.db, lambda: ctx.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
        "application_name = 'safe-migrate-monitor' AND datname = current_database()"), IN_R1)


def idle_session_timeout(ctx: Ctx) -> tuple[int, list[dict[str, Any]]]:
    """The database ends sessions idle for 1s; the lock's session idles while r1 sleeps."""
    ctx.sql(f'ALTER DATABASE "{ctx.db.database}" SET idle_session_timeout = \'1s\'')
    project = ctx.make_project(SLEEPY)
    return ctx.run(project, ctx.db, lambda: None, IN_R1)


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedPostgres]:
    """A server of the module's own: a case restarts it."""
    with EmbeddedPostgres() as server:
        yield server


def restart_during_lock_wait(ctx: Ctx) -> tuple[int, list[dict[str, Any]]]:
    """Another session holds the advisory lock; the server restarts while we wait for it."""
    server: EmbeddedPostgres = ctx.request.getfixturevalue("own_server")
    db = server.url("postgres")
    _rows(db, "DROP TABLE IF EXISTS alembic_version, t2")
    project = ctx.make_project(SLEEPY)
    holder = psycopg.connect(libpq(db), autocommit=True)
    ctx.request.addfinalizer(holder.close)
    holder.execute("SELECT pg_advisory_lock(%s)",
                   (lock_key("postgres", "public", "alembic_version"),))
    waiting = ("SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'safe-migrate-lock%%'")
    code, events = ctx.run(project, db, lambda: server.restart("immediate"), waiting,
                           "--advisory-lock-wait", "60s", "--connect-timeout", "2s")
    assert not _rows(db, "SELECT to_regclass('t2') WHERE to_regclass('t2') IS NOT NULL")
    return code, events


#: (case, the exit codes it may end with)
CASES: list[tuple[Callable[[Ctx], tuple[int, list[dict[str, Any]]]], set[int]]] = [
    (monitor_killed, {0, 7}),  # 7 before the next step, or the run carries on: never 1
    (idle_session_timeout, {0}),  # our sessions switch idle_session_timeout off
    (restart_during_lock_wait, {7}),
]


@pytest.mark.parametrize(("case", "codes"), CASES, ids=[c[0].__name__ for c in CASES])
def test_lost_session(case, codes, tmp_path, db, sql, make_project, request):
    code, events = case(Ctx(tmp_path, db, sql, make_project, request))
    errors = [e for e in events if e["event"] == "error"]
    assert code in codes, errors
    assert len(errors) == (0 if code == 0 else 1)
    assert not [e for e in events if e["event"] == "lock.lost"]
    started = [e["revision"] for e in events if e["event"] == "migration.start"]
    acquired = [e for e in events if e["event"] == "lock.acquired"]
    assert not started or acquired  # never a migration without the lock
