"""Drift: the live schema against the one verify recorded for the database's revision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL
from support import EXAMPLE, Server

from runner.errors import UsageError
from runner.main import main
from runner.schema import snapshot
from runner.schema.drift import check_drift, revision_key


def _live(server: Server, db: URL) -> str:
    return snapshot.take_snapshot(Path(server.pg_dump), db, [(None, "alembic_version")]).text


def test_drift_after_manual_alter_table(tmp_path: Path, server: Server, db: URL,
                                        sql: Callable[..., Any]) -> None:
    schemas = tmp_path / "schemas"
    assert main(["verify", "-c", str(EXAMPLE / "alembic.ini"), "--schema-dir", str(schemas),
                 "--write-schema", str(tmp_path / "heads.sql")], configure_logging=False) == 0
    config = Config(str(EXAMPLE / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", db.render_as_string(hide_password=False))
    command.upgrade(config, "0002")
    assert check_drift(_live(server, db), schemas, "0002") is None
    # a different revision's recording does differ
    assert check_drift(_live(server, db), schemas, "0001") is not None
    sql("ALTER TABLE accounts ADD COLUMN hotfix integer")
    diff = check_drift(_live(server, db), schemas, "0002")
    assert diff is not None and "+    hotfix integer" in diff
    assert "expected/0002.sql" in diff
    command.upgrade(config, "heads")
    single = check_drift(_live(server, db), tmp_path / "heads.sql", "0003")  # a single file
    assert single is not None and "hotfix" in single


def test_missing_recording_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no recorded schema for revision abc"):
        check_drift("", tmp_path, "abc")
    with pytest.raises(UsageError, match="not found"):
        check_drift("", tmp_path / "nope.sql", "abc")


def test_revision_key() -> None:
    assert revision_key(()) == "base" and revision_key(None) == "base"
    assert revision_key(("b", "a")) == "a+b"
