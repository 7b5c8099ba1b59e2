"""Drift: the live schema against the one verify recorded for the database's revision."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from structlog.testing import capture_logs

from runner import logging as runner_logging
from runner.embedded import EmbeddedPostgres
from runner.errors import UsageError
from runner.main import main
from runner.schema import snapshot
from runner.schema.drift import check_drift, revision_key

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "basic"


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    monkeypatch.setattr(runner_logging, "configure", lambda *_a, **_k: None)
    with capture_logs() as captured:
        yield captured


def _live(pg: EmbeddedPostgres) -> str:
    return snapshot.take_snapshot(pg.pg_dump, pg.url(), [(None, "alembic_version")]).text


def test_drift_after_manual_alter_table(tmp_path: Path, pg: EmbeddedPostgres) -> None:
    schemas = tmp_path / "schemas"
    assert main(["verify", "-c", str(EXAMPLE / "alembic.ini"), "--schema-dir", str(schemas),
                 "--write-schema", str(tmp_path / "heads.sql")]) == 0
    config = Config(str(EXAMPLE / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", pg.url().render_as_string(hide_password=False))
    command.upgrade(config, "0002")
    try:
        assert check_drift(_live(pg), schemas, "0002") is None
        # a different revision's recording does differ
        assert check_drift(_live(pg), schemas, "0001") is not None
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("ALTER TABLE accounts ADD COLUMN hotfix integer")
        diff = check_drift(_live(pg), schemas, "0002")
        assert diff is not None and "+    hotfix integer" in diff
        assert "expected/0002.sql" in diff
        command.upgrade(config, "heads")
        single = check_drift(_live(pg), tmp_path / "heads.sql", "0003")  # a single file
        assert single is not None and "hotfix" in single
    finally:
        command.downgrade(config, "base")
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS accounts, alembic_version")


def test_missing_recording_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no recorded schema for revision abc"):
        check_drift("", tmp_path, "abc")
    with pytest.raises(UsageError, match="not found"):
        check_drift("", tmp_path / "nope.sql", "abc")


def test_revision_key() -> None:
    assert revision_key(()) == "base" and revision_key(None) == "base"
    assert revision_key(("b", "a")) == "a+b"
