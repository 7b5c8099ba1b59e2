"""A full disk during a partial apply (issue 14, item 5): the artifacts directory sits on a
small tmpfs that fills up while a non-transactional migration fails. The run still exits 6,
the recovery is recorded in the ledger, and one line says which artifacts could not be
written and where the plan is instead."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from support import Project, cli_args, tables_of, version_of

# r2 commits a table in its autocommit block, then the disk fills up (another writer on the
# same volume: here the migration itself, told where by SM_FILL), then it fails.
FILLS_THEN_FAILS = '''
with op.get_context().autocommit_block():
    op.create_table("half", sa.Column("id", sa.Integer))
if not op.get_context().as_sql:  # online only: lint renders the migration offline first
    with open(os.path.join(os.environ["SM_FILL"], "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass
    raise RuntimeError("failing on purpose")
'''


def _error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if '"event": "error"' in line]
    assert len(lines) == 1, stderr
    return json.loads(lines[0])["message"]


def test_a_full_disk_during_a_partial_apply_still_exits_6_with_the_plan_in_the_ledger(
        small_disk: Path, make_project: Callable[..., Project], db: URL,
        sql: Callable[..., list[tuple[Any, ...]]], run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        logs: list[dict[str, Any]]) -> None:
    project = make_project([("r1", "op.create_table('keep', sa.Column('id', sa.Integer))"),
                            ("r2", FILLS_THEN_FAILS)])
    monkeypatch.setenv("SM_FILL", str(small_disk))
    artifacts = small_disk / "artifacts"
    capsys.readouterr()

    code = run_cli(cli_args(project, db, artifacts=artifacts))

    message = _error(capsys.readouterr().err)
    assert code == 6, message
    assert "failing on purpose" in message  # the migration's own error, not the disk's
    # The disk really was full: nothing more fits.
    with pytest.raises(OSError) as full, open(small_disk / "probe", "wb") as probe:
        probe.write(b"x" * 65536)
        probe.flush()
        os.fsync(probe.fileno())
    assert full.value.errno == errno.ENOSPC
    # The database: r1 applied, r2's committed part left behind.
    assert version_of(sql) == ["r1"] and tables_of(sql) == {"keep", "half"}
    # The ledger holds the recovery, as it would without the full disk.
    [(row,)] = sql("SELECT row_to_json(r) FROM safe_migrate_runs r")
    assert (row["outcome"], row["exit_code"]) == ("partial-apply", 6)
    assert row["recovery"]["status"] == "partial-apply"
    assert row["recovery"]["failed_revision"] == "r2"
    assert [(o["kind"], o["name"]) for o in row["recovery"]["leftovers"]] == [("table", "half")]
    # One line: the failure, which artifacts are missing and why, and where the plan is.
    assert "\n" not in message
    assert "r2" in message and "recovery-plan" in message
    assert "No space left on device" in message and "safe-migrate recover" in message
    [unwritten] = [e for e in logs if e["event"] == "artifacts.unwritten"]
    assert {"recovery-plan.json", "run.json"} <= set(unwritten["files"])
    assert "pre-step-r2.json" not in unwritten["files"]  # written before the disk filled
    assert not (next(artifacts.iterdir()) / "recovery-plan.json").exists()


FILLS = '''
op.create_table("first", sa.Column("id", sa.Integer))
if not op.get_context().as_sql:
    with open(os.path.join(os.environ["SM_FILL"], "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass
'''


def test_without_the_ledger_a_step_that_cannot_be_recorded_does_not_start(
        small_disk: Path, make_project: Callable[..., Project], db: URL,
        sql: Callable[..., list[tuple[Any, ...]]], run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-ledger: the artifacts are the only record of what a non-transactional step could
    leave behind; with the disk full, that step is not started (exit 2), r1 stays applied."""
    project = make_project([
        ("r1", FILLS),
        ("r2", "with op.get_context().autocommit_block():\n"
               "    op.create_table('never', sa.Column('id', sa.Integer))")])
    monkeypatch.setenv("SM_FILL", str(small_disk))
    capsys.readouterr()
    code = run_cli(cli_args(project, db, "--no-ledger", "--no-schema-diff",
                            artifacts=small_disk / "artifacts"))
    message = _error(capsys.readouterr().err)
    assert code == 2, message
    assert "migration r2" in message and "did not start" in message
    assert "No space left on device" in message
    assert version_of(sql) == ["r1"] and tables_of(sql) == {"first"}
