"""`safe-migrate upgrade [TARGET]`: the deploy job."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alembic
import psycopg
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError

from runner import __version__, console, github
from runner.artifacts import Artifacts, Journal, write_termination_log
from runner.db import catalog
from runner.db.connect import connect, first_line
from runner.db.ledger import Identity, parse_table
from runner.db.objects import Recorded
from runner.errors import (
    DatabaseUnreachableError,
    ExitCode,
    LintUnavailableError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
    UsageError,
)
from runner.frameworks.alembic.migrate import Database, MigrationRecord, Migrator
from runner.frameworks.alembic.planning.history import (
    History,
    applied,
    check_target,
    load_history,
    pending,
    read_source,
)
from runner.frameworks.alembic.planning.offline import downgrade_template
from runner.frameworks.alembic.probe import probe
from runner.frameworks.alembic.project import Project, load_project
from runner.lifecycle import embedded_database, interruptible
from runner.logging import get_logger
from runner.recovery.plan import (
    CLEAN_ROLLBACK,
    PARTIAL_APPLY,
    VERIFICATION_FAILED,
    Failure,
)
from runner.recovery.recorder import Recorder
from runner.settings import Settings, add_lint_argument, check_lint_arguments
from runner.urls import mask, mask_text, psql_url

if TYPE_CHECKING:
    from runner.schema.snapshot import Snapshot

#: The common options upgrade reads (runner.settings.add_common_options).
COMMON_OPTIONS = ("embedded", "connect_timeout", "lock_timeout", "statement_timeout",
                  "lock_retries", "advisory_lock_wait", "artifacts_dir", "no_schema_diff",
                  "pg_dump", "ledger_table", "no_ledger")
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate upgrade -c alembic.ini
  safe-migrate upgrade --lock-timeout 500ms --advisory-lock-wait 2m --lint error
  safe-migrate upgrade --embedded -c examples/basic/alembic.ini   # on a throwaway server
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="heads",
                        help="revision to upgrade to (default: heads)")
    add_lint_argument(parser)  # --lint error|warn|off (default warn), --lint-rules
    parser.add_argument("--expected-schema", metavar="FILE|DIR",
                        default=os.environ.get("SAFE_MIGRATE_EXPECTED_SCHEMA"),
                        help="refuse (exit 3) when the schema differs from the one verify recorded")
    parser.add_argument("--allow-drift", action="store_true",
                        default=os.environ.get("SAFE_MIGRATE_ALLOW_DRIFT", "") in ("1", "true"),
                        help="report schema drift but run anyway")
    from runner.fleet import options as fleet  # --targets, --parallel, --canary, --shard...

    fleet.add_arguments(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    check_lint_arguments(args)
    from runner.fleet import options as fleet

    if fleet.requested(args):  # many databases / tenant schemas: runner/fleet
        from runner.fleet import command

        return command.upgrade(settings, args)
    artifacts = Artifacts(settings.artifacts_dir)
    artifacts.prepare()
    project = load_project(settings)
    config_hint = str(settings.config_file)
    log.info("run.start", command="upgrade", target=settings.target, version=__version__,
             config=config_hint, artifacts_dir=str(settings.artifacts_dir))
    finding: Future[Path] | None = None
    if settings.schema_diff:
        # Only with the diff: compiling the dump normalizer's patterns costs ~8 ms at import.
        from runner.schema import snapshot

        finding = snapshot.start_find_pg_dump(settings.pg_dump)  # needed once connected
    # Built inside env.py's first run (the survey), where alembic builds it: see History.
    history = load_history(project.script, config_hint=config_hint, config=project.config)
    console.revision_messages(lambda rev: getattr(history.script.get_revision(rev), "doc",
                                                  None))  # the console names each one
    with embedded_database(settings, project, log), interruptible(log) as interrupted:
        try:
            heads = _survey(settings, project, history)
            expected = check_target(history, settings.target, config_hint=config_hint)
        except PreflightError as exc:
            log.error("preflight.failed", reason=exc.message)
            raise
        findings = _lint(args.lint, settings, project, history, log, heads,
                         args.lint_rules)
        job = UpgradeJob(settings, project, artifacts, log, finding, interrupted, args)
        job.lint_findings = findings
        job.expect_pending = set(heads) != set(expected)
        job.migrator = Migrator(project, settings, history, settings.target, log=log,
                                interrupted=interrupted, hooks=job)
        return job.execute(list(expected))


def _survey(settings: Settings, project: Project, history: History) -> tuple[str, ...]:
    """Run env.py once without changing anything, before anything runs: it must connect to
    the database asked for, and to one database and version table only (probe refuses a
    multidb env.py or a loop over tenants, exit 2). Returns the database's heads. The
    revision graph is built there, inside env.py's run (History).

    With the run's connection retries: an unreachable database is retried here as it would
    be by the migration run itself."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay
    from tenacity import wait_exponential_jitter as jitter

    for attempt in Retrying(retry=retry_if_exception_type(DatabaseUnreachableError),
                            stop=stop_after_delay(settings.connect_timeout),
                            wait=jitter(multiplier=0.2, max=2.0), reraise=True):
        with attempt:
            return probe(project, settings.database_url, load=history.load).heads
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def _lint(mode: str, settings: Settings, project: Project, history: History, log: Any,
          heads: tuple[str, ...], rules: str = "safety") -> list[dict[str, Any]]:
    """Lint what is pending, before the run: alembic's offline mode cannot nest inside the
    online run (it removes the `op` proxy the running migrations use). Returns the findings."""
    if mode == "off":
        return []
    from runner import lint  # only when it runs: squawk, the offline SQL splitter

    started = time.monotonic()
    try:
        revisions = [s.revision for s in pending(history, heads, settings.target)]
    except (CommandError, RevisionError):
        return []  # an unknown database revision: the run's own preflight refuses it (exit 3)
    if not revisions:
        return []
    try:
        findings = lint.lint_pending(project, history, revisions, mode=mode, rules=rules,
                                     log=log)
    except LintUnavailableError as exc:  # squawk missing or broken: only --lint error insists
        if mode == "error":
            raise
        log.warning("lint.unavailable", error=exc.message)
        return []
    log.info("lint.done", revisions=len(revisions), findings=len(findings),
             duration_ms=round((time.monotonic() - started) * 1000))
    found = [f.to_dict() for f in findings]
    github.report_lint(found, mode)  # GitHub Actions: annotations on the revision files
    lint.enforce(findings, mode, log)  # logs lint.finding; error -> PreflightError (exit 3)
    return found


class UpgradeJob:
    """One upgrade run: drives the Migrator, snapshots, the run's record, artifacts."""

    migrator: Migrator
    lint_findings: list[dict[str, Any]]  # for the GitHub summary

    def __init__(self, settings: Settings, project: Project, artifacts: Artifacts, log: Any,
                 finding: Future[Path] | None, interrupted: threading.Event,
                 args: argparse.Namespace) -> None:
        self.settings = settings
        self.project = project
        self.artifacts = artifacts
        self.log = log
        self.finding = finding  # the pg_dump to snapshot with, None with --no-schema-diff
        self.pg_dump: Path | None = None
        self.interrupted = interrupted
        self.started = datetime.now(UTC)
        self.before: str | None = None
        # The before-snapshot, started once the lock is held (see connected()).
        self.taking_before: Future[Snapshot] | None = None
        # The survey saw revisions to run: worth starting that snapshot early.
        self.expect_pending = True
        self.invalid_before: set[tuple[str, str]] = set()
        self.journal: Journal | None = None
        self.expected_schema = Path(args.expected_schema) if args.expected_schema else None
        self.allow_drift: bool = args.allow_drift
        self.recorder = Recorder(settings.run_id, log=log)
        self.failure: Failure | None = None
        # The heads verification read, under the lock the run still holds: the ledger's
        # heads_after without reading them again.
        self.verified_heads: list[str] | None = None

    @property
    def db(self) -> Database | None:
        return self.migrator.db

    @property
    def side(self) -> psycopg.Connection[Any] | None:
        return self.migrator.side

    # -- Hooks for the Migrator --------------------------------------------------------------
    def connected(self, db: Database, side: psycopg.Connection[Any]) -> None:
        monitor = self.migrator.monitor
        if monitor is not None:  # the console's live status line: who blocks the step now
            console.waiting_on(lambda: monitor.waiting)
        if self.finding is not None:
            from runner.schema import snapshot

            # Before anything changes: no pg_dump, or one older than the server, is a
            # configuration error (exit 2).
            self.pg_dump = self.finding.result()
            snapshot.check_pg_dump(self.pg_dump, db.server_version_num)
            if self.expect_pending or self.expected_schema is not None:
                # Under the lock, so no other runner's migration waits on pg_dump's locks;
                # it runs while the ledger, alembic and the plan get ready (tens of ms), and
                # starting() waits for it before the first migration.
                self.taking_before = snapshot.start_snapshot(
                    self.pg_dump, db.url, self._excluded(db),
                    lock_wait_timeout=self._snapshot_lock_wait)
        # Under the advisory lock: the run's ledger row, before anything runs.
        self.recorder.open(side, version_schema=db.version_schema, version_table=db.version_table,
                           ledger_table=self.settings.ledger_table,
                           use_ledger=self.settings.ledger, command="upgrade",
                           target=self.settings.target, database_url=mask(db.url),
                           tool_version=__version__, identity=self._identity(side))

    def _identity(self, side: psycopg.Connection[Any]) -> Identity | None:
        """A fleet worker's kept session knows its database's identity already."""
        sessions = self.migrator.sessions
        return sessions.identity(side) if sessions is not None else None

    def starting(self, db_heads: tuple[str, ...], pending: list[MigrationRecord]) -> None:
        self.recorder.check_unresolved(lambda rev: applied(self.project.script, db_heads, rev))
        if pending:
            assert self.side is not None
            invalid = catalog.invalid_indexes(self.side) + catalog.not_valid_constraints(
                self.side)
            self.invalid_before = {(o["schema"], o["name"]) for o in invalid}
            _refuse_invalid_names(invalid, pending, self.migrator.schemas)
            self.journal = self.artifacts.journal()
        if pending or self.expected_schema is not None:
            self.before = self._snapshot("schema-before.sql", "before", self.taking_before)
        elif self.taking_before is not None:
            # Another runner did the work since the survey: no snapshot is needed after all.
            with contextlib.suppress(Exception):
                self.taking_before.result()
        self._check_drift(db_heads)  # PreflightError -> exit 3, nothing ran
        self._write_run(None)

    def _check_drift(self, db_heads: tuple[str, ...]) -> None:
        if self.expected_schema is None:
            return
        from runner.schema import drift
        if self.before is None:
            raise UsageError("--expected-schema needs the schema snapshots: drop --no-schema-diff")
        key = drift.revision_key(db_heads)
        diff = drift.check_drift(self.before, self.expected_schema, key)
        self.log.info("schema.drift", revision=key, drift=diff is not None)
        if diff is None:
            return
        self.artifacts.write_text("schema-drift.diff", diff)
        if self.allow_drift:
            self.log.warning("schema.drift.allowed", revision=key, file="schema-drift.diff")
            return
        raise PreflightError(f"schema drift before the run: the database at {key} differs from "
                             f"{self.expected_schema} (see schema-drift.diff)", diff=diff)

    def before_step(self, record: MigrationRecord) -> None:
        # The journal names the running step, so that a killed run is read right later.
        assert self.journal is not None
        self.journal.record({"running_revision": record.revision, "attempt": record.attempts})
        if not record.transactional:
            # It can leave part of itself behind: record exactly what was there before it,
            # in the ledger and the artifacts, before it can commit anything.
            try:
                self.recorder.before_step(record.revision, record.down_revision, record.path,
                                          record.attempts, self.migrator.pid)
            except psycopg.OperationalError as exc:
                raise DatabaseUnreachableError(
                    f"lost the runner's own session before migration {record.revision}, so "
                    "what it could leave behind cannot be recorded: it did not start "
                    f"({first_line(mask_text(str(exc)))})", revision=record.revision) from None
            self.recorder.keep(self.artifacts, record.revision)

    # -- the run -------------------------------------------------------------------------------
    def execute(self, expected: list[str]) -> int:
        error: SafeMigrateError | None = None
        try:
            try:
                self.migrator.run()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code
                error = self.migrator.failure(exc)
                if isinstance(error, PreflightError):
                    self.log.error("preflight.failed", reason=error.message)
            if error is None:
                try:
                    error = self._verify(expected)
                except psycopg.OperationalError as exc:
                    # The runner's own session died under the run (terminated, a restart):
                    # what ran is committed, the check did not happen. Retry-safe (exit 7):
                    # the next run has nothing to do and verifies.
                    error = DatabaseUnreachableError(
                        "lost the runner's own session after the migrations ran: post-run "
                        f"verification could not run ({first_line(mask_text(str(exc)))})")
        finally:
            outcome = self._finish(error, expected)
        if error is not None:
            raise error
        return int(outcome)

    def _verify(self, expected: list[str]) -> SafeMigrateError | None:
        heads = self.migrator.read_heads()
        if heads is None and self.db is None:
            return None  # env.py never connected online (nothing to verify against)
        if set(heads or ()) != set(expected):
            self.log.error("verification.failed", expected=expected, actual=list(heads or ()))
            return PartialApplyError(
                f"post-run verification failed: the database is at {list(heads or ()) or 'base'}"
                f", expected {expected}", kind=VERIFICATION_FAILED)
        if self.side is not None and any(not r.transactional for r in self.migrator.applied):
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
        self.log.info("verification.ok", heads=list(heads or ()))
        self.verified_heads = list(heads or ())
        return None

    def _finish(self, error: SafeMigrateError | None, expected: list[str]) -> ExitCode:
        code = ExitCode.OK if error is None else error.exit_code
        try:
            if code in (ExitCode.MIGRATION_FAILED, ExitCode.PARTIAL_APPLY):
                # First, right after the failure: what it left, from the catalog.
                self.failure = self._record_failure(error, expected)
            after = None
            if self.before is not None or self.recorder.pre_step:
                after = self._snapshot("schema-after.sql", "after")
                if after is not None and self.before is not None:
                    from runner.schema import snapshot

                    self.artifacts.write_text("schema.diff", snapshot.diff(self.before, after))
        except Exception as exc:  # noqa: BLE001 - an artifact must never hide the outcome
            # E.g. the server went away with the run: `recover` rebuilds the plan later.
            self.log.error("artifacts.failed", error=f"{type(exc).__name__}: "
                           f"{first_line(mask_text(str(exc)))}")
        finally:
            self._record_outcome(error, code)
            try:
                if self.failure is not None:
                    self._write_plan(self.failure)
            except Exception as exc:  # noqa: BLE001 - a full disk must not hide the exit code
                self.log.error("artifacts.failed", error=f"{type(exc).__name__}: "
                               f"{first_line(mask_text(str(exc)))}")
            self.migrator.close()
            if self.journal is not None:
                self.journal.close()
            applied = len(self.migrator.applied)
            self._write_run(error, final=True)
            self.artifacts.report_unwritten(self.log, error, self.recorder.where_recorded)
            self.log.info("run.done", outcome=_outcome(code), exit_code=int(code),
                          applied=applied)
            summary = (f"safe-migrate {_outcome(code)}: exit {int(code)}, {applied} applied"
                       + (f"; {error.message}" if error else ""))
            write_termination_log(self.settings.termination_log, summary)
            github.report_upgrade(self.artifacts.directory, self.lint_findings)  # never raises
        return code

    def _record_failure(self, error: SafeMigrateError | None,
                        expected: list[str]) -> Failure:
        self._reconnect_if_lost()
        rec = self.migrator.current
        heads = list(self.migrator.read_heads() or ())
        message = error.message if error else None
        if error is not None and error.data.get("kind") == VERIFICATION_FAILED:
            failure = self.recorder.failure(status=VERIFICATION_FAILED, revision=None,
                                            down_revision=None, path=None, heads=heads,
                                            error=message, expected=expected)
            failure.leftovers = self._invalid_leftovers(error.data.get("invalid") or [])
            return failure
        status = PARTIAL_APPLY if rec is not None and rec.partial else CLEAN_ROLLBACK
        # The line that raised, when it is in the revision's own file (not a helper beside it).
        raised = rec.error if rec is not None and rec.error else {}
        line = raised.get("line") if rec is not None and raised.get("file") == rec.path else None
        return self.recorder.failure(
            status=status, revision=rec.revision if rec else None,
            down_revision=rec.down_revision if rec else None, path=rec.path if rec else None,
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
            self.migrator.side = connect(self.db.url, timeout=self.settings.connect_timeout,
                                         application_name="safe-migrate-monitor")
        except SafeMigrateError:
            return
        self.recorder.use(self.migrator.side)

    def _record_outcome(self, error: SafeMigrateError | None, code: ExitCode) -> None:
        """The ledger row's end: outcome, steps, and what recovery needs."""
        if self.recorder.ledger is None:
            return
        try:
            self._reconnect_if_lost()
            self.recorder.finish(
                outcome=_outcome(code), exit_code=int(code),
                error=mask_text(error.message) if error else None,
                heads_before=list(self.migrator.db_heads_before or ()),
                heads_after=(self.verified_heads if error is None and self.verified_heads
                             is not None else list(self.migrator.read_heads() or ())),
                steps=[r.to_dict() for r in self.migrator.records.values() if r.attempts],
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

        rec = self.migrator.current
        downgrade_sql = (downgrade_template(self.project, rec.revision, rec.down_revision)
                         if rec is not None and failure.status == PARTIAL_APPLY else None)
        rollback_file = self.artifacts.directory.resolve() / "rollback.sql"
        # The -x arguments too: with a schema per tenant they say which tenant to fix.
        hint = " ".join([str(self.settings.config_file),
                         *(f"-x {shlex.quote(x)}" for x in self.settings.x_args)])
        plan = recovery.build_plan(
            failure, current=failure.heads, config_hint=hint,
            downgrade_sql=downgrade_sql, psql_url=psql_url(self.db.url) if self.db else None,
            rollback_file=str(rollback_file))
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
        data = {
            "run_id": self.settings.run_id,
            "tool_version": __version__,
            "alembic_version": alembic.__version__,
            "python_version": platform.python_version(),
            "server_version": db.server_version if db else None,
            "database_url": mask(db.url) if db else (
                mask(self.settings.database_url) if self.settings.database_url else None),
            "database": identity.to_dict() if identity else None,
            "version_table": f"{db.version_schema}.{db.version_table}" if db else None,
            "ledger": ledger.qualified if ledger else None,
            "config": str(self.settings.config_file),
            "target": self.settings.target,
            "started_at": self.started.isoformat(),
            "ended_at": None if code is None else datetime.now(UTC).isoformat(),
            "outcome": "running" if code is None else _outcome(ExitCode(code)),
            "exit_code": code,
            "error": error.message if error else None,
            "running_revision": None,  # while it runs: the journal (progress.json)
            "running": None,  # while it runs: pre-step-<rev>.json (artifacts.load_run)
            "heads_before": list(self.migrator.db_heads_before or ()),
            "migrations": [r.to_dict() for r in self.migrator.records.values() if r.attempts],
            "pending": [r.revision for r in self.migrator.records.values() if not r.attempts],
            "recovery": self.failure.to_dict() if self.failure else None,
        }
        # A full disk mid-run: the ledger holds the run; said once at its end.
        self.artifacts.write_run(data, final=final, recorded=self.recorder.ledger is not None
                                 or self.failure is not None)


def _refuse_invalid_names(invalid: list[dict[str, str]], pending: list[MigrationRecord],
                          schemas: tuple[str, ...]) -> None:
    """The IF NOT EXISTS trap: a pending migration that creates an index or constraint whose
    name exists as an INVALID index / NOT VALID constraint would "succeed" over it. Only where
    its names go: the session's search path, or a schema its code names (another tenant's
    invalid index of the same name is no trap for this one)."""
    if not invalid:
        return
    for rec in pending:
        source = read_source(rec.path)
        for obj in invalid:
            if (obj["schema"] in schemas or names_schema(source, obj["schema"])) and creates_name(
                    source, obj["name"]):
                kind = "an INVALID index" if obj["kind"] == "invalid_index" else (
                    "a NOT VALID constraint")
                raise PreflightError(
                    f"pending migration {rec.revision} creates {obj['name']}, which exists as "
                    f"{kind} on {obj['schema']}.{obj['table']}: a re-run with IF NOT EXISTS "
                    "would skip it and stamp the revision over it; run `safe-migrate recover`, "
                    "or drop it (DROP INDEX CONCURRENTLY) / validate it first",
                    revision=rec.revision, name=obj["name"])


def names_schema(source: str, schema: str) -> bool:
    """Whether a revision's code names `schema` (schema="x", x.table, "x"."t") as a word."""
    return re.search(rf"(?<![\w$]){re.escape(schema)}(?![\w$])", source, re.I) is not None


_CREATES = (r"create_index\(\s*(?:op\.f\(\s*)?['\"]{name}['\"]",
            r"create_(?:unique|check|foreign_key|exclude|primary_key)_constraint\(\s*"
            r"(?:op\.f\(\s*)?['\"]{name}['\"]",
            r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
            r"\"?{name}\"?[\s(]",
            r"ADD\s+CONSTRAINT\s+\"?{name}\"?\s")


def creates_name(source: str, name: str) -> bool:
    """Whether a revision's code creates an index or constraint called `name`."""
    if name.lower() not in source.lower():
        return False  # the common case, without a pattern
    escaped = re.escape(name)
    return any(re.search(p.format(name=escaped), source, re.I) for p in _CREATES)


def _outcome(code: ExitCode) -> str:
    return {
        ExitCode.OK: "success", ExitCode.USAGE: "usage-error",
        ExitCode.PREFLIGHT: "preflight-refused",
        ExitCode.LOCK_BUSY: "lock-busy", ExitCode.MIGRATION_FAILED: "migration-failed",
        ExitCode.PARTIAL_APPLY: "partial-apply", ExitCode.UNREACHABLE: "unreachable",
        ExitCode.INTERRUPTED: "interrupted",
    }.get(code, "internal-error")

