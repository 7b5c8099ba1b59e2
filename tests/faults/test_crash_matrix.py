"""The crash matrix: interrupt a 10-migration chain at every migration's start and middle,
three ways (SIGKILL of the runner, pg_terminate_backend of its session, an immediate
restart of the server), and prove each case converges.

After each interruption the run's artifacts folder is deleted (the pod is gone): `status`
and `recover` work from the run ledger in the database alone. `status` reports the database
as it is; `recover --execute` (where the run left a partial apply, or died) leaves it
consistent; the schema then
matches what `verify` recorded for the revision the version table names; `upgrade`
reaches head with the data checksum unchanged and every data migration applied once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL
from support import Project, cli_args, libpq, spawn, write_project

from runner.embedded import EmbeddedPostgres, bin_dir
from runner.main import main
from runner.schema import snapshot

pytestmark = pytest.mark.slow

PAUSE = '''
def _pause(where):
    # The crash matrix stops the migration here: SM_PAUSE=<revision>:<where>.
    if os.environ.get("SM_PAUSE") == f"{revision}:{where}":
        op.execute("SELECT pg_sleep(2)")

'''

# (revision, upgrade body, downgrade body); `_pause("start")` / `_pause("mid")` mark the points.
CHAIN: list[tuple[str, str, str]] = [
    ("m01", """
_pause("start")
op.create_table("ledger", sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("amount", sa.BigInteger, nullable=False))
op.execute("INSERT INTO ledger SELECT g, (g * 7) % 1000 FROM generate_series(1, 500) g")
_pause("mid")
""", 'op.drop_table("ledger")'),
    ("m02", """
_pause("start")
op.add_column("ledger", sa.Column("category", sa.Text))
_pause("mid")
""", 'op.drop_column("ledger", "category")'),
    ("m03", """
_pause("start")
op.execute("UPDATE ledger SET category = CASE WHEN amount % 2 = 0 THEN 'even' ELSE 'odd' END")
_pause("mid")
""", 'op.execute("UPDATE ledger SET category = NULL")'),
    ("m04", """
_pause("start")
with op.get_context().autocommit_block():
    op.create_index("ix_ledger_category", "ledger", ["category"], postgresql_concurrently=True)
    _pause("mid")
""", """
with op.get_context().autocommit_block():
    op.drop_index("ix_ledger_category", table_name="ledger", postgresql_concurrently=True)
"""),
    ("m05", """
_pause("start")
op.create_table("totals", sa.Column("category", sa.Text, primary_key=True),
                sa.Column("total", sa.BigInteger, nullable=False))
_pause("mid")
""", 'op.drop_table("totals")'),
    ("m06", """
_pause("start")
op.execute("INSERT INTO totals SELECT category, sum(amount) FROM ledger GROUP BY category")
_pause("mid")
""", 'op.execute("DELETE FROM totals")'),
    ("m07", """
_pause("start")
with op.get_context().autocommit_block():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("note", sa.Text))
    _pause("mid")
op.create_index("ix_audit_note", "audit", ["note"])
""", 'op.drop_table("audit")'),
    ("m08", """
_pause("start")
op.create_check_constraint("ck_ledger_amount", "ledger", "amount >= 0")
_pause("mid")
""", 'op.drop_constraint("ck_ledger_amount", "ledger")'),
    ("m09", """
_pause("start")
op.execute("INSERT INTO audit (id, note) SELECT row_number() OVER (ORDER BY category), "
           "'total ' || category FROM totals")
_pause("mid")
""", 'op.execute("DELETE FROM audit")'),
    ("m10", """
_pause("start")
with op.get_context().autocommit_block():
    op.create_index("ix_totals_total", "totals", ["total"], postgresql_concurrently=True)
    _pause("mid")
""", """
with op.get_context().autocommit_block():
    op.drop_index("ix_totals_total", table_name="totals", postgresql_concurrently=True)
"""),
]
REVISIONS = [rev for rev, _, _ in CHAIN]
LEDGER = ",".join(f"{g}:{(g * 7) % 1000}" for g in range(1, 501))
LEDGER_MD5 = hashlib.md5(LEDGER.encode()).hexdigest()
CASES = [(rev, where, how) for rev in REVISIONS for where in ("start", "mid")
         for how in ("sigkill", "terminate", "restart")]


@pytest.fixture(scope="module")
def crash_server() -> Iterator[EmbeddedPostgres]:
    """A server of the test's own: one case restarts it."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = write_project(tmp_path_factory.mktemp("crash") / "project", [])
    down: str | None = None
    for rev, upgrade, downgrade in CHAIN:
        project.add(rev, down, upgrade, downgrade)
        path = project.versions / f"{rev}.py"
        text = path.read_text()
        path.write_text(text.replace("\ndef upgrade():", PAUSE + "\ndef upgrade():", 1))
        down = rev
    return project


@pytest.fixture(scope="module")
def recorded(chain: Project, crash_server: EmbeddedPostgres,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The schema at every revision, as `verify` records it (and proof the chain is sound)."""
    schemas = tmp_path_factory.mktemp("schemas")
    assert main(["verify", "-c", str(chain.ini), "--database-url",
                 crash_server.url().render_as_string(hide_password=False), "--schema-dir",
                 str(schemas)], configure_logging=False) == 0
    return schemas


def _query(url: URL, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _wait_for(url: URL, condition: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _query(url, f"SELECT EXISTS ({condition})")[0][0]:
                return True
        except psycopg.OperationalError:
            pass  # the server is restarting
        time.sleep(0.05)
    return False


def _in_pause() -> str:
    return ("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'safe-migrate-migration' AND query LIKE 'SELECT pg_sleep(2)%'")


def _no_migration_session() -> str:
    return ("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = "
            "current_database() AND application_name = 'safe-migrate-migration')")


def _versions(url: URL) -> list[str]:
    if not _query(url, "SELECT to_regclass('public.alembic_version') IS NOT NULL")[0][0]:
        return []
    return [row[0] for row in _query(url, "SELECT version_num FROM alembic_version")]


def _schema(url: URL) -> str:
    return snapshot.take_snapshot(bin_dir() / "pg_dump", url,
                                  [("public", "alembic_version"),
                                   ("public", "safe_migrate_runs")]).text


def _cli(command: str, chain: Project, db: URL, artifacts: Path, *extra: str) -> int:
    pg_dump = ["--pg-dump", str(bin_dir() / "pg_dump")] if command == "upgrade" else []
    return main([command, "-c", str(chain.ini), "--database-url",
                 db.render_as_string(hide_password=False), "--artifacts-dir", str(artifacts),
                 *pg_dump, "--log-format", "json", *extra],
                configure_logging=False)


@pytest.mark.parametrize(("rev", "where", "how"), CASES,
                         ids=[f"{rev}-{where}-{how}" for rev, where, how in CASES])
def test_interrupted_run_converges(rev: str, where: str, how: str, chain: Project,
                                   recorded: Path, crash_server: EmbeddedPostgres,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    maintenance = crash_server.url()
    name = f"sm_test_crash_{rev}_{where}_{how}"
    _query(maintenance, f'CREATE DATABASE "{name}"')
    db = crash_server.url(name)
    art = tmp_path / "run"
    try:
        proc = spawn(cli_args(chain, db, "--lint", "off", artifacts=art),
                     env={"SM_PAUSE": f"{rev}:{where}"})
        assert _wait_for(db, _in_pause()), proc.communicate(timeout=30)[1][-2000:]
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        elif how == "terminate":
            _query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                       "application_name = 'safe-migrate-migration' AND "
                       "datname = current_database()")
        else:
            crash_server.restart("immediate")
        code = proc.wait(60)
        stderr = proc.stderr.read() if proc.stderr else ""
        expected = {"sigkill": {-signal.SIGKILL}, "terminate": {6, 7}, "restart": {6, 7}}[how]
        assert code in expected, stderr[-2000:]
        # An orphaned backend (SIGKILL) finishes its pg_sleep, then sees its client gone.
        assert _wait_for(db, _no_migration_session())

        applied = _versions(db)
        index = REVISIONS.index(rev)
        assert applied == ([REVISIONS[index - 1]] if index else [])  # rev itself never counts
        # The pod is gone with its artifacts: status and recover run from another machine.
        shutil.rmtree(art, ignore_errors=True)
        art = tmp_path / "elsewhere"
        capsys.readouterr()
        assert _cli("status", chain, db, art, "--format", "json") == 0
        status = json.loads(capsys.readouterr().out)
        assert status["current"] == applied and status["lock_holders"] == []
        assert status["pending_count"] == len(REVISIONS) - index
        assert status["last_run"]["outcome"] == (
            "running" if how == "sigkill" else {6: "partial-apply", 7: "unreachable"}[code])

        if how == "sigkill" or code == 6:
            assert _cli("recover", chain, db, art, "--execute", "--yes") == 0
        # Consistent again: the schema is exactly the one verify recorded at this revision.
        at = applied[0] if applied else "base"
        assert _schema(db) == (recorded / f"{at}.sql").read_text(), f"not consistent at {at}"

        assert _cli("upgrade", chain, db, tmp_path / "again", "--lint", "off") == 0
        assert _versions(db) == ["m10"]
        assert _schema(db) == (recorded / "m10.sql").read_text()
        assert _query(db, "SELECT md5(string_agg(id || ':' || amount, ',' ORDER BY id)) "
                          "FROM ledger") == [(LEDGER_MD5,)]
        assert _query(db, "SELECT sum(total) FROM totals") == _query(
            db, "SELECT sum(amount) FROM ledger")
        assert _query(db, "SELECT count(*) FROM audit") == [(2,)]  # m09 ran once
        assert _query(db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    finally:
        _query(maintenance, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

