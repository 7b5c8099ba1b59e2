"""One upgrade run's bookkeeping, whatever the framework applies the steps.

`UpgradeDriver` owns what users trust a run for and what recovery reads afterwards: the
Recorder (ledger row, catalog record before a non-transactional step), the journal, the
schema snapshots and their diff, the invalid indexes / NOT VALID constraints that were there
before and the post-run check that the run left no invalid index, the failure record, the
recovery plan's files, run.json, the termination log and `run.done` with its outcome name.

A framework's job subclasses it and provides only what differs: how it plans and applies
steps (`run_steps`), what an exception means there (`error_of`), what says the database is at
the target (`check_target`, `read_heads`), the recovery plan in its own commands
(`build_plan`), its run.json keys (`run_extras`) and how its sessions close (`close`).
It calls `opened` once it holds the advisory lock, `begin` once it knows the pending
steps, and `before_step` right before each step runs.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from runner import __version__, console, github
from runner.artifacts import Artifacts, Journal, write_termination_log
from runner.db import catalog
from runner.db.connect import connect, first_line
from runner.db.failures import error_info
from runner.db.ledger import Identity, parse_table
from runner.db.objects import Recorded
from runner.errors import (
    DatabaseUnreachableError,
    ExitCode,
    InterruptedRunError,
    MigrationFailedError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
    outcome_name,
)
from runner.frameworks.base import Database, Step
from runner.recovery.plan import (
    CLEAN_ROLLBACK,
    PARTIAL_APPLY,
    VERIFICATION_FAILED,
    Failure,
    RecoveryPlan,
)
from runner.recovery.recorder import Recorder
from runner.settings import Settings
from runner.urls import mask, mask_text

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from runner.db.lock import AdvisoryLock
    from runner.db.monitor import Monitor
    from runner.schema.snapshot import Snapshot


def find_pg_dump(settings: Settings) -> Future[Path] | None:
    """With the schema diff: the pg_dump to snapshot with, looked for while the framework
    loads (needed once connected); None with --no-schema-diff."""
    if not settings.schema_diff:
        return None
    # Only with the diff: compiling the dump normalizer's patterns costs ~8 ms at import.
    from runner.schema import snapshot

    return snapshot.start_find_pg_dump(settings.pg_dump)


# -- one step's bookkeeping, around the framework's apply -----------------------------------
def check_lock(lock: AdvisoryLock, step: Step, log: Any) -> None:
    """Before a step: the advisory lock's session must still be there (exit 7 if not)."""
    if lock.alive():
        return
    lock.held = False  # it went with its session: nothing to release
    log.error("lock.lost", key=lock.key, next_revision=step.id)
    raise DatabaseUnreachableError(
        "the advisory lock's session was lost (terminated, or the server restarted), so "
        f"another runner may start: stopped before migration {step.id}, which did not run",
        revision=step.id)


def unwatch(monitor: Monitor, step: Step) -> None:
    """After a step's attempt: how long it waited on locks, and on whom."""
    blockers, waited = monitor.unwatch()
    step.lock_wait_ms += round(waited * 1000)
    if blockers:
        step.blockers = [b.to_dict() for b in blockers]


def log_failed(log: Any, step: Step, **extra: Any) -> None:
    log.error("migration.failed", revision=step.id, attempt=step.attempts, partial=step.partial,
              duration_ms=step.duration_ms, **(step.error or {}),
              blocking_pids=[b["pid"] for b in step.blockers], **extra)


def log_retry(log: Any, step: Step, sleep: float | None) -> None:
    """A lost lock race, retried after `sleep`: the step is pending again."""
    assert step.error is not None and sleep is not None
    log.warning("migration.retry", revision=step.id, attempt=step.attempts,
                sleep_s=round(sleep, 3), sqlstate=step.error["sqlstate"],
                error=step.error["message"], blocking_pids=[b["pid"] for b in step.blockers],
                blockers=step.blockers)
    step.outcome = "pending"


def step_error(step: Step, exc: BaseException, *, interrupted: bool,
               connection_lost: bool) -> SafeMigrateError:
    """What a step that raised `exc` means, the same words and exit codes on both paths:
    part of it committed (6), interrupted (8), its connection lost (7), or failed and rolled
    back (5), naming the sessions that blocked it. `step.error` is what was caught when it
    raised (the framework may have wrapped the exception since)."""
    info = step.error or error_info(exc, step.path)
    where = _located(step, info)
    if step.partial:
        step.outcome = "partial"
        return PartialApplyError(f"{where} failed after committing part of its work "
                                 f"({_describe(info)}): see the recovery plan",
                                 revision=step.id)
    if interrupted or isinstance(exc, InterruptedRunError):
        step.outcome = "interrupted"
        return InterruptedRunError(f"interrupted during {where}; it was rolled back",
                                   revision=step.id)
    if connection_lost:
        return DatabaseUnreachableError(f"connection lost during {where} ({_describe(info)}); "
                                        "its transaction was not committed", revision=step.id)
    blockers = "; blocked by " + ", ".join(
        f"pid {b['pid']} ({b.get('application_name') or '?'}: {b['query']})"
        for b in step.blockers) if step.blockers else ""
    return MigrationFailedError(f"{where} failed and was rolled back ({_describe(info)})"
                                f"{blockers}", revision=step.id)


def _describe(info: dict[str, Any]) -> str:
    state = f"SQLSTATE {info['sqlstate']}: " if info.get("sqlstate") else ""
    extra = "".join(f"; {label}: {info[key]}" for key, label in (("detail", "DETAIL"),
                                                                 ("hint", "HINT"))
                    if info.get(key))
    return f"{state}{info['message']}{extra}"


def _located(step: Step, info: dict[str, Any]) -> str:
    """`migration r2 (/app/versions/r2.py:12)`: the path as recorded (absolute), since the
    message travels (run.json, the ledger, the recovery plan read from another machine)."""
    file, line = info.get("file") or step.path, info.get("line")
    if not file:
        return f"migration {step.id}"
    return f"migration {step.id} ({file}:{line})" if line else f"migration {step.id} ({file})"


class UpgradeDriver:
    """The framework-neutral part of one `upgrade` run (see the module's docstring)."""

    def __init__(self, settings: Settings, artifacts: Artifacts, log: Any,
                 finding: Future[Path] | None, url: URL | None) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.log = log
        self.finding = finding  # the pg_dump to snapshot with, None with --no-schema-diff
        self.pg_dump: Path | None = None
        self.url = url  # the database's, as far as known before connecting (run.json)
        self.db: Database | None = None  # once connected, under the advisory lock
        self.side: psycopg.Connection[Any] | None = None  # catalog, ledger, monitor session
        self.started = datetime.now(UTC)
        self.recorder = Recorder(settings.run_id, log=log)
        self.journal: Journal | None = None
        self.before: str | None = None  # schema-before.sql's text
        # The before-snapshot, started once the lock is held (see opened()), when the
        # framework saw steps to run before the lock (its survey): begin() waits for it.
        self.expect_pending = False
        self.taking_before: Future[Snapshot] | None = None
        self.invalid_before: set[tuple[str, str]] = set()
        self.failure: Failure | None = None
        self.heads_before: list[str] = []
        self.expected: list[str] = []  # what the database is at once the run succeeded
        # The heads verification read, under the lock the run still holds: the ledger's
        # heads_after without reading them again.
        self.verified_heads: list[str] | None = None
        self.heads_after: list[str] | None = None
        self.lint_findings: list[dict[str, Any]] = []  # for the GitHub summary

    # -- what the framework provides ------------------------------------------------------
    def steps(self) -> list[Step]:
        """Every step the run planned, in order (run.json's migrations and pending)."""
        raise NotImplementedError

    def current(self) -> Step | None:
        """The step that is running, or the last one that ran."""
        raise NotImplementedError

    def run_steps(self) -> None:
        """Connect, lock, plan and apply, calling opened / starting / before_step."""
        raise NotImplementedError

    def error_of(self, exc: BaseException) -> SafeMigrateError:
        """What ended the run, as the SPEC's error (and exit code)."""
        raise NotImplementedError

    def check_target(self) -> list[str] | None:
        """The heads, once the framework's record says the run reached the target; raises
        PartialApplyError (kind verification-failed) when not; None: nothing to verify."""
        raise NotImplementedError

    def read_heads(self) -> list[str] | None:
        """What the framework's record says the database is at now."""
        raise NotImplementedError

    def build_plan(self, failure: Failure, rollback_file: str) -> RecoveryPlan:
        """The recovery plan, in the framework's own commands."""
        raise NotImplementedError

    def run_extras(self) -> dict[str, Any]:
        """run.json's framework keys (its version, its configuration...)."""
        raise NotImplementedError

    def close(self) -> None:
        """End the run's sessions and release the advisory lock."""
        raise NotImplementedError

    def refuse_invalid(self, invalid: list[dict[str, str]], pending: list[Step]) -> None:
        """Refuse (PreflightError) a pending step that would build over an invalid object."""

    def check_before(self) -> None:
        """The schema before the run, as the framework checks it (PreflightError: exit 3)."""

    def side_replaced(self, side: psycopg.Connection[Any]) -> None:
        """A new side session replaced a lost one (the framework's code may hold it too)."""

    # -- the framework's calls ------------------------------------------------------------
    def opened(self, db: Database, side: psycopg.Connection[Any], *,
               monitor: Monitor | None = None, identity: Identity | None = None,
               snapshot_always: bool = False) -> None:
        """Connected and holding the advisory lock: check pg_dump (and start the
        before-snapshot when steps are expected, or `snapshot_always`), open the ledger row."""
        self.db, self.side, self.url = db, side, db.url
        if monitor is not None:  # the console's live status line: who blocks the step now
            console.waiting_on(lambda: monitor.waiting)
        if self.finding is not None:
            from runner.schema import snapshot

            # Before anything changes: no pg_dump, or one older than the server, is a
            # configuration error (exit 2).
            self.pg_dump = self.finding.result()
            snapshot.check_pg_dump(self.pg_dump, db.server_version_num)
            if self.expect_pending or snapshot_always:
                # Under the lock, so no other runner's migration waits on pg_dump's locks;
                # it runs while the ledger, the framework and the plan get ready (tens of
                # ms), and begin() waits for it before the first step.
                self.taking_before = snapshot.start_snapshot(
                    self.pg_dump, db.url, self._excluded(db),
                    lock_wait_timeout=self._snapshot_lock_wait)
        # Under the advisory lock: the run's ledger row, before anything runs.
        self.recorder.open(side, version_schema=db.version_schema, version_table=db.version_table,
                           ledger_table=self.settings.ledger_table,
                           use_ledger=self.settings.ledger, command="upgrade",
                           target=self.settings.target, database_url=mask(db.url),
                           tool_version=__version__, identity=identity)

    def begin(self, heads: list[str], pending: list[Step], is_applied: Callable[[str], bool],
              *, snapshot: bool = False) -> None:
        """The steps are known, nothing ran: refuse over an unresolved failure, record the
        invalid objects there before, open the journal, take schema-before.sql (with pending
        steps, or when `snapshot`), write run.json."""
        self.heads_before = list(heads)
        self.recorder.check_unresolved(is_applied)
        if pending:
            assert self.side is not None
            invalid = catalog.invalid_indexes(self.side) + catalog.not_valid_constraints(
                self.side)
            self.invalid_before = {(o["schema"], o["name"]) for o in invalid}
            self.refuse_invalid(invalid, pending)
            self.journal = self.artifacts.journal()
        if pending or snapshot:
            self.before = self._snapshot("schema-before.sql", "before", self.taking_before)
        elif self.taking_before is not None:
            # Another runner did the work since the survey: no snapshot is needed after all.
            with contextlib.suppress(Exception):
                self.taking_before.result()
        self.check_before()
        self._write_run(None)

    def before_step(self, step: Step, pid: int | None) -> None:
        """Right before a step: the journal names it, so that a killed run is read right
        later; before a non-transactional one, what was there (ledger and artifacts)."""
        assert self.journal is not None
        self.journal.record({"running_revision": step.id, "attempt": step.attempts})
        if step.transactional:
            return
        # It can leave part of itself behind: record exactly what was there before it, in
        # the ledger and the artifacts, before it can commit anything.
        try:
            self.recorder.before_step(step.id, step.previous, step.path, step.attempts, pid)
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachableError(
                f"lost the runner's own session before migration {step.id}, so what it could "
                "leave behind cannot be recorded: it did not start "
                f"({first_line(mask_text(str(exc)))})", revision=step.id) from None
        self.recorder.keep(self.artifacts, step.id)

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> int:
        error: SafeMigrateError | None = None
        try:
            try:
                self.run_steps()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code
                error = self.error_of(exc)
                if isinstance(error, PreflightError):
                    self.log.error("preflight.failed", reason=error.message)
            if error is None:
                try:
                    error = self._verify()
                except psycopg.OperationalError as exc:
                    # The runner's own session died under the run (terminated, a restart):
                    # what ran is committed, the check did not happen. Retry-safe (exit 7):
                    # the next run has nothing to do and verifies.
                    error = DatabaseUnreachableError(
                        "lost the runner's own session after the migrations ran: post-run "
                        f"verification could not run ({first_line(mask_text(str(exc)))})")
        finally:
            code = self._finish(error)
        if error is not None:
            raise error
        return int(code)

    def applied(self) -> list[Step]:
        return [s for s in self.steps() if s.outcome == "applied"]

    def _verify(self) -> SafeMigrateError | None:
        try:
            heads = self.check_target()
        except PartialApplyError as exc:
            return exc
        if heads is None:
            return None  # never connected online (nothing to verify against)
        if self.side is not None and any(not s.transactional for s in self.applied()):
            # CREATE INDEX CONCURRENTLY whose failure a migration swallowed: "success" with an
            # index that enforces nothing. Only a non-transactional step can leave one (inside
            # a transaction CONCURRENTLY is refused, and a step that ended its transaction is
            # a partial apply already): after transactional steps only, the catalog-wide scan
            # (~2 ms at 2,000 tenant schemas, per target) is skipped.
            left = [o for o in catalog.invalid_indexes(self.side)
                    if (o["schema"], o["name"]) not in self.invalid_before]
            if left:
                names = ", ".join(f"{o['schema']}.{o['name']}" for o in left)
                self.log.error("verification.failed", invalid_indexes=names)
                return PartialApplyError(
                    f"post-run verification failed: this run left invalid index(es) {names}",
                    kind=VERIFICATION_FAILED, invalid=left)
        self.log.info("verification.ok", heads=heads)
        self.verified_heads = heads
        return None

    def _finish(self, error: SafeMigrateError | None) -> ExitCode:
        code = ExitCode.OK if error is None else error.exit_code
        try:
            if code in (ExitCode.MIGRATION_FAILED, ExitCode.PARTIAL_APPLY):
                # First, right after the failure: what it left, from the catalog.
                self.failure = self._record_failure(error)
            if self.before is not None or self.recorder.pre_step:
                after = self._snapshot("schema-after.sql", "after")
                if after is not None and self.before is not None:
                    from runner.schema import snapshot

                    self.artifacts.write_text("schema.diff", snapshot.diff(self.before, after))
        except Exception as exc:  # noqa: BLE001 - an artifact must never hide the outcome
            # E.g. the server went away with the run: `recover` rebuilds the plan later.
            self._artifacts_failed(exc)
        finally:
            self._record_outcome(error, code)
            try:
                if self.failure is not None:
                    self._write_plan(self.failure)
            except Exception as exc:  # noqa: BLE001 - a full disk must not hide the exit code
                self._artifacts_failed(exc)
            try:  # run.json's heads_after, before the sessions go (not when unreadable)
                self._heads_after()
            except (psycopg.Error, SafeMigrateError):
                self.heads_after = self.heads_after or []
            self._settle_snapshot()
            self.close()
            if self.journal is not None:
                self.journal.close()
            applied = len(self.applied())
            self._write_run(error, final=True)
            self.artifacts.report_unwritten(self.log, error, self.recorder.where_recorded)
            outcome = outcome_name(code)
            self.log.info("run.done", outcome=outcome, exit_code=int(code), applied=applied)
            write_termination_log(self.settings.termination_log,
                                  f"safe-migrate {outcome}: exit {int(code)}, {applied} applied"
                                  + (f"; {error.message}" if error else ""))
            github.report_upgrade(self.artifacts.directory, self.lint_findings)  # never raises
        return code

    def _settle_snapshot(self) -> None:
        """The early pg_dump still runs when the run ended before it was needed (a refusal,
        an error): wait for it before the lock goes, so that no other runner's first DDL
        queues behind its ACCESS SHARE locks."""
        if self.taking_before is not None:
            with contextlib.suppress(Exception):
                self.taking_before.result()

    def _artifacts_failed(self, exc: Exception) -> None:
        self.log.error("artifacts.failed",
                       error=f"{type(exc).__name__}: {first_line(mask_text(str(exc)))}")

    def _heads_after(self) -> list[str]:
        """Where the run left the database: read once (verification read it already)."""
        if self.heads_after is None:
            self._reconnect_if_lost()
            self.heads_after = (self.verified_heads if self.verified_heads is not None
                                else list(self.read_heads() or ()))
        return self.heads_after

    def _record_failure(self, error: SafeMigrateError | None) -> Failure:
        heads = self._heads_after()
        message = error.message if error else None
        if error is not None and error.data.get("kind") == VERIFICATION_FAILED:
            failure = self.recorder.failure(status=VERIFICATION_FAILED, revision=None,
                                            down_revision=None, path=None, heads=heads,
                                            error=message, expected=self.expected)
            failure.leftovers = self._invalid_leftovers(error.data.get("invalid") or [])
            return failure
        step = self.current()
        status = PARTIAL_APPLY if step is not None and step.partial else CLEAN_ROLLBACK
        # The line that raised, when it is in the step's own file (not a helper beside it).
        raised = step.error if step is not None and step.error else {}
        line = raised.get("line") if step is not None and raised.get("file") == step.path else None
        return self.recorder.failure(
            status=status, revision=step.id if step else None,
            down_revision=step.previous if step else None, path=step.path if step else None,
            heads=heads, error=message, line=line)

    def _invalid_leftovers(self, invalid: list[dict[str, str]]) -> list[Recorded]:
        from runner.db import objects

        found = [Recorded("invalid_index", o["schema"], o["name"], o["table"]) for o in invalid]
        if self.side is None:
            return found
        live = objects.definitions(self.side, found)
        return [Recorded(o.kind, o.schema, o.name, o.table, definition=live.get(o.key, ""))
                for o in found]

    def _reconnect_if_lost(self) -> None:
        """The server restarted under the run: the record is worth a new connection."""
        side = self.side
        if self.db is None or side is None or not (side.closed or side.broken):
            return
        try:
            self.side = connect(self.db.url, timeout=self.settings.connect_timeout,
                                application_name="safe-migrate-monitor")
        except SafeMigrateError:
            return
        self.recorder.use(self.side)
        self.side_replaced(self.side)

    def _record_outcome(self, error: SafeMigrateError | None, code: ExitCode) -> None:
        """The ledger row's end: outcome, steps, and what recovery needs."""
        if self.recorder.ledger is None:
            return
        try:
            self.recorder.finish(
                outcome=outcome_name(code), exit_code=int(code),
                error=mask_text(error.message) if error else None,
                heads_before=self.heads_before, heads_after=self._heads_after(),
                steps=[s.to_dict() for s in self.steps() if s.attempts],
                recovery=self.failure.to_dict() if self.failure else None)
        except (psycopg.Error, SafeMigrateError) as exc:
            # The local artifacts still hold it all; recover falls back to them.
            self.log.error("ledger.failed", error=first_line(mask_text(str(exc))))

    def _excluded(self, db: Database) -> list[tuple[str | None, str]]:
        # The runner's bookkeeping is no part of the schema (the ledger's default place
        # even with --no-ledger: an earlier run may have created it).
        return [(db.version_schema, db.version_table),
                parse_table(self.settings.ledger_table, db.version_schema)]

    @property
    def _snapshot_lock_wait(self) -> float:
        return max(self.settings.lock_timeout, 5.0)

    def _snapshot(self, name: str, label: str,
                  started: Future[Snapshot] | None = None) -> str | None:
        if self.pg_dump is None or self.db is None:
            return None
        from runner.schema import snapshot

        snap = started.result() if started is not None else snapshot.take_snapshot(
            self.pg_dump, self.db.url, self._excluded(self.db),
            lock_wait_timeout=self._snapshot_lock_wait)
        self.artifacts.write_text(name, snap.text)
        self.log.info("schema.snapshot", which=label, file=name,
                      duration_ms=round(snap.seconds * 1000), bytes=len(snap.text))
        return snap.text

    def _write_plan(self, failure: Failure) -> None:
        from runner.recovery import plan as recovery

        plan = self.build_plan(failure, str(self.artifacts.directory.resolve() / "rollback.sql"))
        self.artifacts.write_json("recovery-plan.json", plan.to_dict())
        self.artifacts.write_text("recovery-plan.md", recovery.render_markdown(plan))
        self.artifacts.write_text("rollback.sql", recovery.rollback_script(plan))
        self.log.warning("recovery.plan", status=plan.status, stamp_target=plan.stamp_target,
                         leftovers=len(plan.leftover_objects),
                         leftovers_known=plan.leftovers_known, commands=plan.commands,
                         file=str(self.artifacts.directory / "recovery-plan.md"))

    def _write_run(self, error: SafeMigrateError | None, *, final: bool = False) -> None:
        code = (int(error.exit_code) if error else 0) if final else None
        db = self.db
        identity = self.recorder.identity
        ledger = self.recorder.ledger
        steps = self.steps()
        data = {
            "run_id": self.settings.run_id,
            "tool_version": __version__,
            **self.run_extras(),
            "python_version": platform.python_version(),
            "server_version": db.server_version if db else None,
            "database_url": mask(self.url) if self.url else None,
            "database": identity.to_dict() if identity else None,
            "version_table": f"{db.version_schema}.{db.version_table}" if db else None,
            "ledger": ledger.qualified if ledger else None,
            "target": self.settings.target,
            "started_at": self.started.isoformat(),
            "ended_at": None if code is None else datetime.now(UTC).isoformat(),
            "outcome": "running" if code is None else outcome_name(ExitCode(code)),
            "exit_code": code,
            "error": error.message if error else None,
            "running_revision": None,  # while it runs: the journal (progress.json)
            "running": None,  # while it runs: pre-step-<rev>.json (artifacts.load_run)
            "heads_before": self.heads_before,
            "migrations": [s.to_dict() for s in steps if s.attempts],
            "pending": [s.id for s in steps if not s.attempts],
            "recovery": self.failure.to_dict() if self.failure else None,
        }
        # A full disk mid-run: the ledger holds the run; said once at its end.
        self.artifacts.write_run(data, final=final, recorded=self.recorder.ledger is not None
                                 or self.failure is not None)

