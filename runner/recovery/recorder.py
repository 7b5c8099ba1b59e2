"""What an upgrade records for recovery while it runs: its ledger row, the catalog before each
non-transactional step, and, when a step fails, what that step left behind.

Framework-neutral: it sees steps (revision, transactional, source path), a psycopg side
connection and the version table, never Alembic itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from runner.artifacts import Artifacts, pre_step_file
from runner.db import ledger as ledger_mod
from runner.db import objects
from runner.db.ledger import Identity, Ledger
from runner.errors import UsageError
from runner.frameworks.base import read_source
from runner.recovery import leftovers
from runner.recovery.plan import PARTIAL_APPLY, Failure
from runner.recovery.runs import PastRun, refusal, still_open


class Recorder:
    def __init__(self, run_id: str, *, log: Any) -> None:
        self.run_id = run_id
        self.log = log
        self.conn: psycopg.Connection[Any] | None = None
        self.identity: Identity | None = None
        self.ledger: Ledger | None = None
        self.finished = False  # the ledger row holds the outcome (and any plan)
        self.pre_step: dict[str, objects.Existing] = {}
        self.running: dict[str, Any] | None = None

    def open(self, conn: psycopg.Connection[Any], *, version_schema: str, version_table: str,
             ledger_table: str | None, use_ledger: bool, command: str, target: str | None,
             database_url: str, tool_version: str, identity: Identity | None = None) -> None:
        """Under the advisory lock: the database's identity (unless known for this session),
        and this run's ledger row."""
        self.conn = conn
        self.identity = identity or ledger_mod.identity(conn)
        if not use_ledger:
            return
        schema, table = ledger_mod.parse_table(ledger_table, version_schema)
        self.ledger = Ledger(conn, schema, table, self.identity,
                             f"{version_schema}.{version_table}")
        self.ledger.ensure()
        self.ledger.start(self.run_id, command, target=target, database_url=database_url,
                          tool_version=tool_version)

    def use(self, conn: psycopg.Connection[Any]) -> None:
        """A new connection, when the server went away under the old one (a restart)."""
        self.conn = conn
        if self.ledger is not None:
            self.ledger.conn = conn

    def check_unresolved(self, is_applied: Callable[[str], bool]) -> None:
        """Exit 3 while an earlier failure is unresolved: its leftovers are still there, and
        a re-run would fail on them or, worse, succeed over them (IF NOT EXISTS)."""
        if self.ledger is None or self.ledger.new:  # a ledger made by this run: no past run
            return
        runs = [PastRun(row) for row in self.ledger.unresolved(own=self.run_id)]
        for run in still_open(runs, is_applied):
            raise refusal(run, f"ledger {self.ledger.qualified}")
        self.ledger.close_dead_runs(self.run_id)

    def before_step(self, revision: str, down_revision: Any, path: str, attempt: int,
                    pid: int | None) -> None:
        """Right before a non-transactional step: the catalog as it is (milliseconds), in
        the ledger before the step can commit anything (one round trip)."""
        assert self.conn is not None
        before = objects.existing(self.conn)
        self.pre_step[revision] = before
        self.running = {"revision": revision, "down_revision": down_revision, "path": path,
                        "transactional": False, "attempt": attempt, "pid": pid,
                        "pre_step": before.to_dict()}
        if self.ledger is not None:
            self.ledger.update(self.run_id, running=self.running)

    def keep(self, artifacts: Artifacts, revision: str) -> None:
        """The record of the step about to run in `pre-step-<rev>.json` too: with the journal
        naming the step, what a killed run's artifacts say it was doing (artifacts.load_run).
        With the ledger off it is the only record, so a step it cannot be written for (a
        full disk) does not start (exit 2); with the ledger the run goes on."""
        try:
            artifacts.write_text(pre_step_file(revision), json.dumps(self.running))
        except OSError as exc:
            if self.ledger is None:
                raise UsageError(
                    f"cannot record what migration {revision} could leave behind in "
                    f"{artifacts.directory} ({exc.strerror}), and the ledger is off "
                    "(--no-ledger): it did not start", revision=revision) from None

    def failure(self, *, status: str, revision: str | None, down_revision: Any,
                path: str | None, heads: list[str], error: str | None,
                expected: list[str] | None = None, line: int | None = None) -> Failure:
        """Right after the failure, on the runner's own connection: what the step left."""
        failure = Failure(run_id=self.run_id, status=status, failed_revision=revision,
                          down_revision=down_revision, path=path, heads=heads, error=error,
                          expected=expected, line=line)
        if status != PARTIAL_APPLY:
            return failure
        before = self.pre_step.get(revision or "")
        if before is None or self.conn is None:
            failure.leftovers_known = False
            return failure
        try:
            failure.leftovers, failure.unattributed = leftovers.record(
                self.conn, before, read_source(path))
        except psycopg.Error as exc:
            self.log.error("recovery.record_failed", error=str(exc).splitlines()[0])
            failure.leftovers_known = False
        return failure

    def finish(self, **fields: Any) -> None:
        if self.ledger is not None:
            self.ledger.finish(self.run_id, **fields)
            self.finished = True

    @property
    def where_recorded(self) -> str | None:
        """The ledger that holds the run's outcome and any recovery plan, once it does."""
        return self.ledger.qualified if self.ledger is not None and self.finished else None

