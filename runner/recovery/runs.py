"""Past runs of one database, as `status` and `recover` read them: the run ledger first (it is
in the database, so it works from any machine), the local artifacts only without a ledger.

Every run is tied to its database (system identifier, database OID and name, version table):
runs of another database are never used, and an artifacts folder given for one is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from runner.artifacts import find_run_dirs, load_run
from runner.db import ledger as ledger_mod
from runner.db.ledger import Identity, Ledger
from runner.db.objects import Existing
from runner.errors import PreflightError
from runner.recovery.plan import Failure

RESOLVED_FILE = "resolved.json"  # without a ledger: recover's mark in the failed run's folder


@dataclass
class PastRun:
    """One run, as the ledger row or run.json recorded it (the same keys)."""

    data: dict[str, Any]
    directory: Path | None = None  # artifacts runs only

    @property
    def run_id(self) -> str:
        return str(self.data.get("run_id"))

    @property
    def outcome(self) -> str:
        return str(self.data.get("outcome"))

    @property
    def running(self) -> dict[str, Any]:
        return self.data.get("running") or {}

    @property
    def died_in_non_transactional_step(self) -> bool:
        return self.outcome == "running" and self.running.get("transactional") is False

    @property
    def recorded_failure(self) -> Failure | None:
        recovery = self.data.get("recovery")
        return Failure.from_dict(recovery) if recovery else None

    @property
    def pre_step(self) -> Existing | None:
        record = self.running.get("pre_step")  # the ledger's, or pre-step-<rev>.json's
        return Existing.from_dict(record) if record else None

    def summary(self) -> dict[str, Any]:
        return {key: self.data.get(key) for key in (
            "run_id", "command", "outcome", "exit_code", "started_at", "ended_at", "error",
            "host", "resolved_at", "resolved_by", "resolution")} | {
            "running_revision": self.running.get("revision") or self.data.get(
                "running_revision"),
            "failed_revision": (self.data.get("recovery") or {}).get("failed_revision")
            or self.running.get("revision"),
            "directory": str(self.directory) if self.directory else None}


def still_open(runs: list[PastRun], is_applied: Callable[[str], bool]) -> list[PastRun]:
    """The failures still to recover: a run that died after its non-transactional step
    committed (the version table has it) left nothing behind."""
    return [run for run in runs
            if not (run.outcome == "running" and is_applied(str(run.running.get("revision"))))]


def refusal(run: PastRun, origin: str) -> PreflightError:
    """Why upgrade (and plan) refuse while `run` is unresolved (exit 3)."""
    revision = (run.data.get("recovery") or {}).get("failed_revision") or run.running.get(
        "revision")
    return PreflightError(
        f"run {run.run_id} ({run.outcome}, revision {revision}) left a partial apply that is "
        f"not resolved ({origin}): run `safe-migrate recover` to see and undo it, or "
        "`safe-migrate recover --mark-resolved` once fixed by hand", run_id=run.run_id)


class RunHistory:
    """The past runs of the database `conn` is connected to, for one version table."""

    def __init__(self, me: Identity, version_table: str, ledger: Ledger | None,
                 artifacts_root: Path) -> None:
        self.me = me
        self.version_table = version_table
        self.ledger = ledger
        self.artifacts_root = artifacts_root

    @classmethod
    def open(cls, conn: psycopg.Connection[Any], *, version_schema: str, version_table: str,
             ledger_table: str | None, use_ledger: bool, artifacts_root: Path) -> RunHistory:
        me = ledger_mod.identity(conn)
        qualified = f"{version_schema}.{version_table}"
        ledger = None
        if use_ledger:
            schema, table = ledger_mod.parse_table(ledger_table, version_schema)
            candidate = Ledger(conn, schema, table, me, qualified)
            ledger = candidate if candidate.exists() else None
        return cls(me, qualified, ledger, artifacts_root)

    @property
    def origin(self) -> str:
        return (f"ledger {self.ledger.qualified}" if self.ledger
                else f"artifacts {self.artifacts_root}")

    def runs(self) -> list[PastRun]:
        """Newest first."""
        if self.ledger is not None:
            return [PastRun(row) for row in self.ledger.runs()]
        return list(reversed(self._artifact_runs()))

    def unresolved(self) -> list[PastRun]:
        """Failures nobody recovered or marked resolved, newest first: partial applies, and
        runs that died inside a non-transactional step."""
        if self.ledger is not None:
            return [PastRun(row) for row in self.ledger.unresolved()]
        return [run for run in self.runs()
                if (run.outcome in ledger_mod.UNRESOLVED or run.died_in_non_transactional_step)
                and run.directory is not None
                and not (run.directory / RESOLVED_FILE).is_file()]

    def resolve(self, run: PastRun, resolution: str, note: str | None) -> None:
        if self.ledger is not None:
            self.ledger.resolve(run.run_id, resolution, note)
            return
        assert run.directory is not None
        who = ledger_mod.who()
        (run.directory / RESOLVED_FILE).write_text(json.dumps(
            {"resolution": resolution, "note": note, "by": who["user"], "from": who["host"]}))

    def still_unresolved(self, run: PastRun) -> bool:
        if self.ledger is not None:
            row = self.ledger.get(run.run_id)
            return row is not None and row.get("resolved_at") is None
        return run.directory is not None and not (run.directory / RESOLVED_FILE).is_file()

    def _artifact_runs(self) -> list[PastRun]:
        """Runs under --artifacts-dir for this database, oldest first. A folder that is itself
        one run, of another database, is refused: it was named for this one by mistake."""
        found: list[PastRun] = []
        dirs = find_run_dirs(self.artifacts_root)
        for directory in dirs:
            data = load_run(directory)
            database = data.get("database") or {}
            mine = self.me.matches(database) and data.get("version_table") in (
                None, self.version_table)
            if not mine and directory == self.artifacts_root:
                raise PreflightError(
                    f"the run in {directory} was for another database "
                    f"({database.get('database_name') or 'unknown'}, system "
                    f"{database.get('system_identifier') or 'unknown'}), not "
                    f"{self.me.database_name} (system {self.me.system_identifier}): refused")
            if mine:
                found.append(PastRun(data, directory))
        return found
