"""`safe-migrate verify`: the stairway (upgrade, downgrade, re-upgrade) on a scratch database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from runner import logging as runner_logging
from runner.embedded import EmbeddedPostgres
from runner.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "basic"

CREATE = '''
def upgrade():
    op.create_table("accounts", sa.Column("id", sa.BigInteger, primary_key=True),
                    sa.Column("email", sa.Text, nullable=False))


def downgrade():
    op.drop_table("accounts")
'''
ADD = '''
def upgrade():
    op.add_column("accounts", sa.Column("nick", sa.Text, nullable=True))


def downgrade():
    op.drop_column("accounts", "nick")
'''
BROKEN_DOWN = '''
def upgrade():
    op.create_table("notes", sa.Column("id", sa.BigInteger, primary_key=True))


def downgrade():
    op.drop_table("no_such_table")
'''
INDEX = '''
def upgrade():
    op.create_index("ix_accounts_email", "accounts", ["email"])


def downgrade():
    op.drop_index("ix_accounts_email", table_name="accounts")
'''


def make_project(root: Path, revisions: list[tuple[str, str]]) -> Path:
    """alembic.ini + env.py (the example's) + a linear versions/<rev>_rev.py chain."""
    (root / "versions").mkdir(parents=True)
    shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
    shutil.copy(EXAMPLE / "env.py", root / "env.py")
    down = None
    for rev, body in revisions:
        header = (f'"""{rev}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
                  f"revision = {rev!r}\ndown_revision = {down!r}\n"
                  "branch_labels = None\ndepends_on = None\n")
        (root / "versions" / f"{rev}_rev.py").write_text(header + body)
        down = rev
    return root / "alembic.ini"


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(autouse=True)
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    # main() reconfigures structlog, which would replace capture_logs' processor list.
    monkeypatch.setattr(runner_logging, "configure", lambda *_a, **_k: None)
    with capture_logs() as captured:
        yield captured


def _steps(logs: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    return [(e["revision"], e["direction"], e["ok"]) for e in logs if e["event"] == "verify.step"]


def _databases(pg: EmbeddedPostgres) -> list[str]:
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]


def test_verify_healthy_history_on_embedded(tmp_path: Path, logs: list[dict[str, Any]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [("r1", CREATE), ("r2", ADD), ("r3", INDEX)])
    schema_dir, heads = tmp_path / "schemas", tmp_path / "heads.sql"
    code = main(["verify", "-c", str(ini), "--schema-dir", str(schema_dir),
                 "--write-schema", str(heads)])
    assert code == 0
    assert _steps(logs) == [(rev, d, True) for rev in ("r1", "r2", "r3")
                            for d in ("upgrade", "downgrade", "re-upgrade")]
    assert all(isinstance(e["duration_ms"], int) for e in logs if e["event"] == "verify.step")
    assert sorted(p.name for p in schema_dir.iterdir()) == [
        "base.sql", "r1.sql", "r2.sql", "r3.sql"]
    assert "nick" not in (schema_dir / "r1.sql").read_text()
    assert "nick text" in (schema_dir / "r2.sql").read_text()
    assert heads.read_text() == (schema_dir / "r3.sql").read_text()
    assert "alembic_version" not in heads.read_text()
    assert "0 failed" in capsys.readouterr().out


def test_verify_reports_the_failing_downgrade_and_goes_on(
        tmp_path: Path, pg: EmbeddedPostgres, logs: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    ini = make_project(tmp_path, [("r1", CREATE), ("r2", BROKEN_DOWN), ("r3", ADD)])
    before = set(_databases(pg))
    code = main(["verify", "-c", str(ini), "--database-url",
                 pg.url().render_as_string(hide_password=False)])
    assert code == 3
    failed = [e for e in logs if e["event"] == "verify.failed"]
    assert [(e["revision"], e["direction"]) for e in failed] == [("r2", "downgrade")]
    assert "no_such_table" in failed[0]["error"] and "\n" not in failed[0]["error"]
    steps = _steps(logs)
    assert ("r2", "downgrade", False) in steps
    # rebuilt at r2, then r3 is still proven
    assert ("r2", "rebuild", True) in steps
    assert [s for s in steps if s[0] == "r3"] == [
        ("r3", "upgrade", True), ("r3", "downgrade", True), ("r3", "re-upgrade", True)]
    out = capsys.readouterr()
    assert "FAILED r2 downgrade" in out.out
    assert "r2 downgrade" in out.err
    # the temporary database is gone again
    assert set(_databases(pg)) == before


def test_verify_optuna_migrations(logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    optuna = pytest.importorskip("optuna")
    rdb = Path(optuna.__file__).parent / "storages" / "_rdb"
    monkeypatch.chdir(rdb)  # its alembic.ini says script_location = alembic (relative)
    code = main(["verify", "-c", "alembic.ini"])
    assert code == 3
    failed = {(e["revision"], e["direction"]) for e in logs if e["event"] == "verify.failed"}
    assert ("v3.0.0.c", "downgrade") in failed
    assert "FAILED v3.0.0.c downgrade" in capsys.readouterr().out
