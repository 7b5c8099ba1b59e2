"""The user's SQLAlchemy 1.4 (issue 14, item 9): it has no psycopg 3 dialect, so a
`postgresql+psycopg` URL is a configuration error (exit 2) with the way out, never a bug.
Runs in CI's SQLAlchemy 1.4 pass; the rest of that pass runs the usual tests on psycopg2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from support import Project, cli_args

from runner.urls import SQLALCHEMY_2

pytestmark = pytest.mark.skipif(SQLALCHEMY_2, reason="SQLAlchemy 2 has the psycopg dialect")


def _error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if '"event": "error"' in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("where", ["--database-url", "alembic.ini"])
def test_a_psycopg3_url_on_sqlalchemy_14_is_a_usage_error(
        where: str, make_project: Callable[..., Project], db: URL,
        sql: Callable[..., list[tuple[Any, ...]]], run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    psycopg3 = db.set(drivername="postgresql+psycopg")
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))")],
                           url=psycopg3 if where == "alembic.ini" else db)
    args = cli_args(project, psycopg3 if where == "--database-url" else db,
                    artifacts=tmp_path / "a")
    if where == "alembic.ini":
        args = [a for a in args if a not in ("--database-url", args[args.index(
            "--database-url") + 1])]
    capsys.readouterr()
    code = run_cli(args)
    line = _error(capsys.readouterr().err)
    assert code == 2, line
    assert "postgresql+psycopg2://" in line and "SQLAlchemy 1.4" in line
    assert sql("SELECT to_regclass('t1')") == [(None,)]  # nothing ran
