"""`safe-migrate upgrade [TARGET]`: the deploy job."""

from __future__ import annotations

import argparse
import os
import shlex
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import alembic
import psycopg
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError

from runner import __version__, console, github
from runner.artifacts import Artifacts
from runner.errors import (
    DatabaseUnreachableError,
    LintUnavailableError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
    UsageError,
)
from runner.frameworks.alembic.migrate import Migrator
from runner.frameworks.alembic.planning.history import (
    History,
    applied,
    check_target,
    load_history,
    pending,
)
from runner.frameworks.alembic.planning.offline import downgrade_template
from runner.frameworks.alembic.probe import probe
from runner.frameworks.alembic.project import Project, load_project, point_at
from runner.frameworks.base import Database, Step
from runner.lifecycle import embedded_database, interruptible
from runner.logging import get_logger
from runner.recovery import traps
from runner.recovery.plan import PARTIAL_APPLY, VERIFICATION_FAILED, Failure, RecoveryPlan
from runner.settings import Settings, add_lint_argument, check_lint_arguments
from runner.upgrade import UpgradeDriver, find_pg_dump
from runner.urls import psql_url

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
    finding = find_pg_dump(settings)  # needed once connected
    # Built inside env.py's first run (the survey), where alembic builds it: see History.
    history = load_history(project.script, config_hint=config_hint, config=project.config)
    console.revision_messages(lambda rev: getattr(history.script.get_revision(rev), "doc",
                                                  None))  # the console names each one
    with embedded_database(settings, log, point_at(project)), \
            interruptible(log) as interrupted:
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
        job.expected = list(expected)
        job.expect_pending = set(heads) != set(expected)
        job.migrator = Migrator(project, settings, history, settings.target, log=log,
                                interrupted=interrupted, hooks=job)
        return job.execute()


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


class UpgradeJob(UpgradeDriver):
    """One upgrade run: the Migrator applies the revisions; the rest is the core's."""

    migrator: Migrator

    def __init__(self, settings: Settings, project: Project, artifacts: Artifacts, log: Any,
                 finding: Future[Path] | None, interrupted: threading.Event,
                 args: argparse.Namespace) -> None:
        super().__init__(settings, artifacts, log, finding, settings.database_url)
        self.project = project
        self.interrupted = interrupted
        self.expected_schema = Path(args.expected_schema) if args.expected_schema else None
        self.allow_drift: bool = args.allow_drift
        # Worth starting the before-snapshot once the lock is held (run() says whether the
        # survey saw revisions to run; a fleet's target reaching the lock is behind).
        self.expect_pending = True

    # -- Hooks for the Migrator --------------------------------------------------------------
    def connected(self, db: Database, side: psycopg.Connection[Any]) -> None:
        # A fleet worker's kept session knows its database's identity already.
        sessions = self.migrator.sessions
        self.opened(db, side, monitor=self.migrator.monitor,
                    identity=sessions.identity(side) if sessions is not None else None,
                    snapshot_always=self.expected_schema is not None)

    def starting(self, db_heads: tuple[str, ...], pending: list[Step]) -> None:
        self.begin(list(db_heads), pending, lambda rev: applied(self.project.script, db_heads, rev),
                   snapshot=self.expected_schema is not None)

    def refuse_invalid(self, invalid: list[dict[str, str]], pending: list[Step]) -> None:
        traps.refuse_invalid_names(invalid, pending, self.migrator.schemas)

    def check_before(self) -> None:
        """--expected-schema: drift before the run is exit 3, nothing ran."""
        if self.expected_schema is None:
            return
        from runner.schema import drift
        if self.before is None:
            raise UsageError("--expected-schema needs the schema snapshots: drop --no-schema-diff")
        key = drift.revision_key(tuple(self.heads_before))
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

    # -- what the core asks ------------------------------------------------------------------
    def steps(self) -> list[Step]:
        return list(self.migrator.records.values())

    def current(self) -> Step | None:
        return self.migrator.current

    def run_steps(self) -> None:
        self.migrator.run()

    def error_of(self, exc: BaseException) -> SafeMigrateError:
        return self.migrator.failure(exc)

    def read_heads(self) -> list[str] | None:
        heads = self.migrator.read_heads()
        return None if heads is None else list(heads)

    def check_target(self) -> list[str] | None:
        heads = self.read_heads()
        if heads is None and self.db is None:
            return None  # env.py never connected online (nothing to verify against)
        if set(heads or ()) != set(self.expected):
            self.log.error("verification.failed", expected=self.expected, actual=heads or [])
            raise PartialApplyError(
                f"post-run verification failed: the database is at {heads or 'base'}"
                f", expected {self.expected}", kind=VERIFICATION_FAILED)
        return heads or []

    def side_replaced(self, side: psycopg.Connection[Any]) -> None:
        self.migrator.side = side  # closed (or kept, in a fleet) with the run's others

    def close(self) -> None:
        self.migrator.close()

    def build_plan(self, failure: Failure, rollback_file: str) -> RecoveryPlan:
        from runner.recovery import plan as recovery

        rec = self.migrator.current
        downgrade_sql = (downgrade_template(self.project, rec.id, rec.previous)
                         if rec is not None and failure.status == PARTIAL_APPLY else None)
        # The -x arguments too: with a schema per tenant they say which tenant to fix.
        hint = " ".join([str(self.settings.config_file),
                         *(f"-x {shlex.quote(x)}" for x in self.settings.x_args)])
        return recovery.build_plan(
            failure, current=failure.heads, config_hint=hint, downgrade_sql=downgrade_sql,
            psql_url=psql_url(self.db.url) if self.db else None, rollback_file=rollback_file)

    def run_extras(self) -> dict[str, Any]:
        return {"alembic_version": alembic.__version__, "config": str(self.settings.config_file)}

