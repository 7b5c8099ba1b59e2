"""`safe-migrate upgrade [TARGET]`: the deploy job."""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alembic
import psycopg
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError

from runner import __version__
from runner.artifacts import Artifacts, Journal, write_termination_log
from runner.db.connect import first_line
from runner.db.migrate import Database, MigrationRecord, Migrator
from runner.db.probe import ProbeResult, probe
from runner.errors import (
    DatabaseUnreachableError,
    ExitCode,
    LintUnavailableError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
    UsageError,
)
from runner.lifecycle import embedded_database, interruptible
from runner.logging import get_logger
from runner.planning.history import History, check_target, load_history, pending
from runner.planning.offline import downgrade_template
from runner.project import Project, load_project
from runner.settings import Settings, add_lint_argument, check_lint_arguments
from runner.urls import mask, mask_text


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


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    check_lint_arguments(args)
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
    try:
        history = load_history(project.script, config_hint=config_hint)
        expected = check_target(history, settings.target, config_hint=config_hint)
    except PreflightError as exc:
        log.error("preflight.failed", reason=exc.message)
        raise
    with embedded_database(settings, project, log), interruptible(log) as interrupted:
        _lint(args.lint, settings, project, history, log, args.lint_rules)
        job = UpgradeJob(settings, project, artifacts, log, finding, interrupted, args)
        job.migrator = Migrator(project, settings, history, settings.target, log=log,
                                interrupted=interrupted, hooks=job)
        return job.execute(list(expected))


def _lint(mode: str, settings: Settings, project: Project, history: History, log: Any,
          rules: str = "safety") -> None:
    """Lint what is pending, before the run: alembic's offline mode cannot nest inside the
    online run (it removes the `op` proxy the running migrations use)."""
    if mode == "off":
        return
    from runner import lint  # only when it runs: squawk, the offline SQL splitter

    started = time.monotonic()
    # Unreachable database, broken env.py, the wrong database: the run would stop too.
    heads = _probe_with_retries(project, settings).heads
    try:
        revisions = [s.revision for s in pending(history, heads, settings.target)]
    except (CommandError, RevisionError):
        return  # an unknown database revision: the run's own preflight refuses it (exit 3)
    if not revisions:
        return
    try:
        findings = lint.lint_pending(project, history, revisions, mode=mode, rules=rules,
                                     log=log)
    except LintUnavailableError as exc:  # squawk missing or broken: only --lint error insists
        if mode == "error":
            raise
        log.warning("lint.unavailable", error=exc.message)
        return
    log.info("lint.done", revisions=len(revisions), findings=len(findings),
             duration_ms=round((time.monotonic() - started) * 1000))
    lint.enforce(findings, mode, log)  # logs lint.finding; error -> PreflightError (exit 3)


def _probe_with_retries(project: Project, settings: Settings) -> ProbeResult:
    """probe(), retried like the run's own connections for up to --connect-timeout: a
    database that is briefly unreachable must not fail the lint step when the run would wait."""
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential_jitter,
    )

    for attempt in Retrying(retry=retry_if_exception_type(DatabaseUnreachableError),
                            stop=stop_after_delay(settings.connect_timeout),
                            wait=wait_exponential_jitter(multiplier=0.2, max=2.0), reraise=True):
        with attempt:
            return probe(project, settings.database_url)
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


class UpgradeJob:
    """One upgrade run: drives the Migrator, snapshots, verification, artifacts."""

    migrator: Migrator

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
        self.pre_step: dict[str, str] = {}
        self.journal: Journal | None = None
        self.expected_schema = Path(args.expected_schema) if args.expected_schema else None
        self.allow_drift: bool = args.allow_drift

    @property
    def db(self) -> Database | None:
        return self.migrator.db

    @property
    def side(self) -> psycopg.Connection[Any] | None:
        return self.migrator.side

    # -- Hooks for the Migrator --------------------------------------------------------------
    def connected(self, db: Database, side: psycopg.Connection[Any]) -> None:
        if self.finding is not None:
            from runner.schema import snapshot

            # Before anything changes: no pg_dump, or one older than the server, is a
            # configuration error (exit 2).
            self.pg_dump = self.finding.result()
            snapshot.check_pg_dump(self.pg_dump, db.server_version_num)

    def starting(self, db_heads: tuple[str, ...], pending: list[MigrationRecord]) -> None:
        if pending:
            self.journal = self.artifacts.journal()
        if pending or self.expected_schema is not None:
            self.before = self._snapshot("schema-before.sql", "before")
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
            # It can leave part of itself behind: know exactly what was there before it.
            text = self._snapshot(f"schema-pre-{record.revision}.sql", f"pre {record.revision}")
            if text is not None:
                self.pre_step[record.revision] = text
            self._write_run(None, running=record.revision)

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
                error = self._verify(expected)
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
            from runner.recovery import plan as recovery
            self.log.error("verification.failed", expected=expected, actual=list(heads or ()))
            return PartialApplyError(
                f"post-run verification failed: the database is at {list(heads or ()) or 'base'}"
                f", expected {expected}", kind=recovery.VERIFICATION_FAILED)
        self.log.info("verification.ok", heads=list(heads or ()))
        return None

    def _finish(self, error: SafeMigrateError | None, expected: list[str]) -> ExitCode:
        code = ExitCode.OK if error is None else error.exit_code
        try:
            after = None
            if self.before is not None or self.pre_step:
                after = self._snapshot("schema-after.sql", "after")
                if after is not None and self.before is not None:
                    from runner.schema import snapshot

                    self.artifacts.write_text("schema.diff", snapshot.diff(self.before, after))
            if code in (ExitCode.MIGRATION_FAILED, ExitCode.PARTIAL_APPLY):
                self._write_plan(error, expected, after)
        except Exception as exc:  # noqa: BLE001 - an artifact must never hide the outcome
            # E.g. the server went away with the run: `recover` rebuilds the plan later.
            self.log.error("artifacts.failed", error=f"{type(exc).__name__}: "
                           f"{first_line(mask_text(str(exc)))}")
        finally:
            self.migrator.close()
            if self.journal is not None:
                self.journal.close()
            applied = len(self.migrator.applied)
            self._write_run(error, final=True)
            self.log.info("run.done", outcome=_outcome(code), exit_code=int(code),
                          applied=applied)
            summary = (f"safe-migrate {_outcome(code)}: exit {int(code)}, {applied} applied"
                       + (f"; {error.message}" if error else ""))
            write_termination_log(self.settings.termination_log, summary)
        return code

    def _snapshot(self, name: str, label: str) -> str | None:
        if self.pg_dump is None or self.db is None:
            return None
        from runner.schema import snapshot

        exclude = [(self.db.version_schema, self.db.version_table)]
        snap = snapshot.take_snapshot(self.pg_dump, self.db.url, exclude,
                                      lock_wait_timeout=max(self.settings.lock_timeout, 5.0))
        self.artifacts.write_text(name, snap.text)
        self.log.info("schema.snapshot", which=label, file=name,
                      duration_ms=round(snap.seconds * 1000), bytes=len(snap.text))
        return snap.text

    def _write_plan(self, error: SafeMigrateError | None, expected: list[str],
                    after: str | None) -> None:
        # Imported on failure only: a successful run's start-up is measured (benchmarks/).
        from runner.recovery import plan as recovery
        from runner.recovery.leftovers import find_leftovers

        rec = self.migrator.current
        heads = list(self.migrator.read_heads() or ())
        if error is not None and error.data.get("kind") == recovery.VERIFICATION_FAILED:
            status = recovery.VERIFICATION_FAILED
        elif rec is not None and rec.partial:
            status = recovery.PARTIAL_APPLY
        else:
            status = recovery.CLEAN_ROLLBACK
        leftovers: list[recovery.Leftover] = []
        if status == recovery.PARTIAL_APPLY and self.side is not None:
            # Against the schema right before the failed migration only: earlier ones in
            # this run changed the schema legitimately.
            base = self.pre_step.get(rec.revision) if rec else None
            leftovers = find_leftovers(self.side, base, after)
        downgrade_sql = (downgrade_template(self.project, rec.revision, rec.down_revision)
                         if rec is not None else None)
        down_rev = rec.down_revision if rec and isinstance(rec.down_revision, str) else None
        plan = recovery.build_plan(
            status=status, current=heads, failed_revision=rec.revision if rec else None,
            failed_down_revision=down_rev, failed_path=rec.path if rec else None,
            leftovers=leftovers, downgrade_sql=downgrade_sql,
            config_hint=str(self.settings.config_file),
            error=error.message if error else None, expected=expected)
        self.artifacts.write_json("recovery-plan.json", plan.to_dict())
        self.artifacts.write_text("recovery-plan.md", recovery.render_markdown(plan))
        self.artifacts.write_text("rollback.sql", recovery.rollback_script(plan))
        self.log.warning("recovery.plan", status=plan.status, stamp_target=plan.stamp_target,
                         leftovers=len(plan.leftover_objects), commands=plan.commands,
                         file=str(self.artifacts.directory / "recovery-plan.md"))

    def _write_run(self, error: SafeMigrateError | None, *, final: bool = False,
                   running: str | None = None) -> None:
        code = (int(error.exit_code) if error else 0) if final else None
        db = self.db
        data = {
            "run_id": self.settings.run_id,
            "tool_version": __version__,
            "alembic_version": alembic.__version__,
            "python_version": platform.python_version(),
            "server_version": db.server_version if db else None,
            "database_url": mask(db.url) if db else (
                mask(self.settings.database_url) if self.settings.database_url else None),
            "version_table": f"{db.version_schema}.{db.version_table}" if db else None,
            "config": str(self.settings.config_file),
            "target": self.settings.target,
            "started_at": self.started.isoformat(),
            "ended_at": None if code is None else datetime.now(UTC).isoformat(),
            "outcome": "running" if code is None else _outcome(ExitCode(code)),
            "exit_code": code,
            "error": error.message if error else None,
            "running_revision": running,
            "heads_before": list(self.migrator.db_heads_before or ()),
            "migrations": [r.to_dict() for r in self.migrator.records.values() if r.attempts],
            "pending": [r.revision for r in self.migrator.records.values() if not r.attempts],
        }
        self.artifacts.write_json("run.json", data)


def _outcome(code: ExitCode) -> str:
    return {
        ExitCode.OK: "success", ExitCode.USAGE: "usage-error",
        ExitCode.PREFLIGHT: "preflight-refused",
        ExitCode.LOCK_BUSY: "lock-busy", ExitCode.MIGRATION_FAILED: "migration-failed",
        ExitCode.PARTIAL_APPLY: "partial-apply", ExitCode.UNREACHABLE: "unreachable",
        ExitCode.INTERRUPTED: "interrupted",
    }.get(code, "internal-error")

