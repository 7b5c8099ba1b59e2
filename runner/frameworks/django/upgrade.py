"""`safe-migrate upgrade --framework django`: the deploy job around Django's executor.

Django's own MigrationLoader/MigrationExecutor apply the migrations, one at a time, on the
alias's connection that the runner prepared: the advisory lock held on a side session,
lock_timeout/statement_timeout set before each migration, a lock race retried while the
migration is atomic (its transaction rolled back, nothing committed). The rest is the core's:
ledger, catalog record before a non-atomic migration, snapshots, recovery plan, exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg

from runner import __version__
from runner.artifacts import Artifacts
from runner.db import catalog, objects
from runner.db.connect import connect, first_line
from runner.db.failures import LOCK_RACE, ends_transaction, error_info, sqlstate_of
from runner.db.lock import AdvisoryLock
from runner.db.monitor import Monitor, sample_interval
from runner.durations import to_postgres_ms
from runner.errors import (
    DatabaseUnreachableError,
    InterruptedRunError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
)
from runner.frameworks.base import Database, Step
from runner.frameworks.django import project as dj
from runner.frameworks.django import recovery
from runner.lifecycle import embedded_database, interruptible
from runner.logging import get_logger
from runner.recovery import traps
from runner.recovery.plan import PARTIAL_APPLY, VERIFICATION_FAILED, Failure, RecoveryPlan
from runner.settings import Settings
from runner.upgrade import (
    UpgradeDriver,
    check_lock,
    find_pg_dump,
    log_failed,
    log_retry,
    step_error,
    unwatch,
)
from runner.urls import mask, mask_text

CONNECTION_LOST = ("57P01", "57P02", "57P03", "08")
_READS = ("select", "show", "set ")  # statements taken to change nothing (WITH can write)
_IDLE = 0  # libpq's PQTRANS_IDLE (psycopg 3 and psycopg2 alike): no transaction open


def _transaction_ended(connection: Any) -> bool:
    """Inside Django's atomic block, the session is out of any transaction: a statement
    ended it."""
    info = getattr(connection.connection, "info", None)
    return getattr(info, "transaction_status", None) == _IDLE


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    artifacts = Artifacts(settings.artifacts_dir)
    artifacts.prepare()
    log.info("run.start", command="upgrade", framework="django", target=settings.target,
             version=__version__, config=settings.django_settings,
             database=settings.database_alias, artifacts_dir=str(settings.artifacts_dir))
    finding = find_pg_dump(settings)  # needed once connected
    with embedded_database(settings, log), interruptible(log) as interrupted:
        connection = dj.setup(settings.django_settings, settings.database_alias,
                              settings.database_url)
        try:
            loader = dj.load_graph()  # from the files alone: conflicts, missing parents
            dj.check_model_changes(loader, args.model_changes, log)
            findings = lint_pending(connection, settings, args, log)
        except PreflightError as exc:
            log.error("preflight.failed", reason=exc.message)
            raise
        job = DjangoUpgrade(settings, connection, loader, artifacts, log, finding, interrupted)
        job.lint_findings = findings
        if settings.schema_diff:  # then pg_dump starts as soon as the lock is held
            job.expect_pending = dj.anything_pending(connection, loader)
        return job.execute()


def lint_pending(connection: Any, settings: Settings, args: argparse.Namespace,
                 log: Any) -> list[dict[str, Any]]:
    """--lint: squawk over each pending migration's SQL, as on the Alembic path: before the
    lock and before anything runs; --lint error refuses on any finding (exit 3). Returns the
    findings (for the GitHub summary)."""
    if args.lint == "off":
        return []
    from django.db import DatabaseError
    from django.db.migrations.exceptions import NodeNotFoundError
    from django.db.migrations.executor import MigrationExecutor

    started = time.monotonic()
    try:
        executor = MigrationExecutor(connection)  # reads django_migrations
        migrations = dj.plan(executor, dj.targets(executor.loader, settings.target),
                             settings.target)
    except (SafeMigrateError, DatabaseError, NodeNotFoundError):
        return []  # the run's own preflight (or connect) refuses it, with its exit code
    if not migrations:
        return []
    # Only now: runner.lint loads alembic (and SQLAlchemy) through the Alembic path's modules.
    from runner import github, lint
    from runner.frameworks.django.inspect import describe_all, lint_findings

    pending = describe_all(executor.loader, migrations)
    findings, _ = lint_findings(pending, args.lint, args.lint_rules, log)
    log.info("lint.done", revisions=len(pending), findings=len(findings),
             duration_ms=round((time.monotonic() - started) * 1000))
    found = [f.to_dict() for f in findings]
    github.report_lint(found, args.lint)
    lint.enforce(findings, args.lint, log)  # logs lint.finding; error: PreflightError
    return found


class DjangoUpgrade(UpgradeDriver):
    """One upgrade run: Django's executor applies the migrations; the rest is the core's."""

    def __init__(self, settings: Settings, connection: Any, loader: Any, artifacts: Artifacts,
                 log: Any, finding: Future[Path] | None, interrupted: threading.Event) -> None:
        url = dj.sqlalchemy_url(connection)
        super().__init__(settings, artifacts, log, finding, url)
        self.connection = connection
        self.loader = loader
        self.interrupted = interrupted
        self.planned: list[Step] = []
        self.running: Step | None = None
        self.lock: AdvisoryLock | None = None
        self.monitor: Monitor | None = None
        self.pid: int | None = None
        self.schema = "public"
        self.schemas: tuple[str, ...] = ()
        self.executor: Any = None
        self.writes = 0  # statements of the running step that changed something
        # Session-level SETs outlive each migration's transaction: sent once at connect,
        # again only after a migration that touched a timeout (a round trip saved per step).
        self.timeouts_changed = False
        self.timeouts = (f"SET lock_timeout = '{to_postgres_ms(settings.lock_timeout)}'; "
                         "SET statement_timeout = "
                         f"'{to_postgres_ms(settings.statement_timeout)}'")

    # -- the run --------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        return self.planned

    def current(self) -> Step | None:
        return self.running

    def run_steps(self) -> None:
        self._connect()
        from django.db.migrations.exceptions import NodeNotFoundError
        from django.db.migrations.executor import MigrationExecutor

        try:  # again, under the lock: what django_migrations says now
            self.executor = MigrationExecutor(self.connection)
        except NodeNotFoundError as exc:
            raise dj.node_not_found(exc) from None
        loader = self.executor.loader
        dj.check_history(loader, self.connection)
        heads = self.heads_before = dj.Applied(set(loader.applied_migrations)).heads()
        migrations = dj.plan(self.executor, dj.targets(loader, self.settings.target),
                             self.settings.target)
        self.planned = [dj.step_of(m, loader) for m in migrations]
        self.expected = [s.id for s in self.planned]
        self.log.info("preflight.ok", current=heads, pending=len(self.planned),
                      target=self.settings.target)
        self.begin(heads, self.planned, lambda step_id: tuple(step_id.split(".", 1))
                   in self.executor.loader.applied_migrations)
        self._apply_all(migrations)

    def _connect(self) -> None:
        from django.db import DatabaseError

        url = self.url
        assert url is not None
        # The runner's own session first: connect retries, exit 7 / exit 2 classification.
        self.side = connect(url, timeout=self.settings.connect_timeout,
                            application_name="safe-migrate-monitor")
        try:
            self.connection.ensure_connection()
            with self.connection.cursor() as cursor:
                cursor.execute("SET application_name = 'safe-migrate-migration'; "
                               + self.timeouts)
                if self.connection.pg_version >= 140000:
                    cursor.execute("SET idle_session_timeout = 0")  # idles while we lock
                cursor.execute("SELECT pg_backend_pid(), current_schema(), "
                               "current_setting('transaction_read_only') = 'on', "
                               "pg_is_in_recovery(), current_schemas(false)")
                pid, schema, read_only, in_recovery, schemas = cursor.fetchone()
        except DatabaseError as exc:
            raise DatabaseUnreachableError(
                f"cannot connect to {mask(url)}: {first_line(mask_text(str(exc)))}"
            ) from None
        if read_only or in_recovery:
            from runner.db.connect import read_only_error

            raise read_only_error(bool(in_recovery))
        self.pid, self.schema = int(pid), str(schema or "public")
        self.schemas = tuple(str(name) for name in schemas or ())  # where its names go
        side = self.side
        db = Database(url=url, version_table=dj.VERSION_TABLE, version_schema=self.schema,
                      server_version_num=side.info.server_version,
                      server_version=(side.info.parameter_status("server_version")
                                      or catalog.server_version(side)))
        self.log.info("database", url=mask(url), server_version=db.server_version,
                      version_table=f"{self.schema}.{dj.VERSION_TABLE}")
        self.lock = AdvisoryLock.open(url, self.schema, dj.VERSION_TABLE,
                                      timeout=self.settings.connect_timeout,
                                      run_id=self.settings.run_id, log=self.log,
                                      interrupted=self.interrupted)
        self.lock.acquire(self.settings.advisory_lock_wait)
        self.monitor = Monitor(self.side, self.interrupted,
                               interval=sample_interval(self.settings.lock_timeout))
        self.monitor.start()
        self.opened(db, side, monitor=self.monitor)

    def refuse_invalid(self, invalid: list[dict[str, str]], pending: list[Step]) -> None:
        traps.refuse_invalid_names(invalid, pending, self.schemas)

    def _apply_all(self, migrations: list[Any]) -> None:
        """As `manage.py migrate` does around its executor: pre_migrate with the state before,
        the plan, then post_migrate with the final state's apps (content types and
        permissions), so that the database ends the same as under Django's command."""
        from django.apps import apps
        from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
        from django.db.migrations.state import ModelState

        alias = self.connection.alias
        plan = [(m, False) for m in migrations]
        before = self.executor._create_project_state(with_applied_migrations=True)
        emit_pre_migrate_signal(0, False, alias, apps=before.apps, plan=plan)
        state = before.clone()
        if migrations:
            self.executor.recorder.ensure_schema()
            with self.connection.execute_wrapper(self._statement):
                for migration, step in zip(migrations, self.planned, strict=True):
                    state = self._apply_with_retries(migration, step, state)
        self.executor.check_replacements()  # squashed migrations whose parts all ran
        state.clear_delayed_apps_cache()
        after = state.apps
        with after.bulk_update():  # real apps re-rendered with their relations (as migrate)
            keys = []
            for model_state in after.real_models:
                keys.append((model_state.app_label, model_state.name_lower))
                after.unregister_model(*keys[-1])
        after.render_multiple([ModelState.from_model(apps.get_model(*key)) for key in keys])
        emit_post_migrate_signal(0, False, alias, apps=after, plan=plan)

    def _apply_with_retries(self, migration: Any, step: Step, state: Any) -> Any:
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        def retrying(retry: RetryCallState) -> None:
            log_retry(self.log, step, retry.upcoming_sleep)

        for attempt in Retrying(
                retry=retry_if_exception(lambda exc: self._lost_lock_race(step, exc)),
                stop=stop_after_attempt(self.settings.lock_retries + 1),
                wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
                before_sleep=retrying, sleep=self._sleep, reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    # The failed attempt changed the in-memory state: rebuild it.
                    self.executor.loader.build_graph()
                    state = self.executor._create_project_state(with_applied_migrations=True)
                return self._apply(migration, step, state)
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    def _sleep(self, seconds: float) -> None:
        if self.interrupted.wait(seconds):
            raise InterruptedRunError("interrupted while waiting to retry")

    def _lost_lock_race(self, step: Step, exc: BaseException) -> bool:
        return (step.transactional and step.outcome == "failed" and not step.partial
                and not self.interrupted.is_set() and sqlstate_of(exc) in LOCK_RACE)

    def _apply(self, migration: Any, step: Step, state: Any) -> Any:
        if self.interrupted.is_set():
            raise InterruptedRunError("interrupted before the next migration")
        assert self.lock is not None
        check_lock(self.lock, step, self.log)
        self.running = step
        step.attempts += 1
        step.error = None
        step.outcome = "running"
        self.before_step(step, self.pid)
        if self.timeouts_changed:  # a migration changed them: set again, before the next
            with self.connection.cursor() as cursor:
                cursor.execute(self.timeouts)
            self.timeouts_changed = False
        self.writes = 0
        step.broke_transaction = False
        started = time.monotonic()
        self.log.info("migration.start", revision=step.id, down_revision=step.previous,
                      attempt=step.attempts, transactional=step.transactional)
        assert self.monitor is not None and self.pid is not None
        self.monitor.watch(self.pid)
        try:
            if "apps" not in state.__dict__:
                state.apps  # noqa: B018 - render the models once, as Django's executor does
            state = self.executor.apply_migration(state, migration)
        except BaseException as exc:
            step.outcome = "failed"
            step.error = error_info(exc, step.path)
            dj.end_broken_atomic(self.connection)
            step.partial = (step.broke_transaction if step.transactional
                            else self._left_something(step))
            unwatch(self.monitor, step)
            step.duration_ms = _ms_since(started)
            log_failed(self.log, step)
            raise
        unwatch(self.monitor, step)
        step.outcome = "applied"
        step.duration_ms = _ms_since(started)
        if step.transactional and step.broke_transaction:
            self._broken_atomic(step)
        self.log.info("migration.done", revision=step.id, duration_ms=step.duration_ms,
                      attempts=step.attempts, lock_wait_ms=step.lock_wait_ms)
        return state

    def _broken_atomic(self, step: Step) -> None:
        """An atomic migration ran its own COMMIT/ROLLBACK and then succeeded: Django
        recorded it, but part of it may have been undone or committed on its own (exit 6)."""
        step.outcome = "partial"
        step.partial = True
        log_failed(self.log, step, reason="ran its own COMMIT or ROLLBACK")
        raise PartialApplyError(
            f"migration {step.id} ran its own COMMIT or ROLLBACK inside its transaction "
            "(atomic = True): what it did is no longer one unit (part of it may have been "
            "undone or committed apart from its django_migrations row); it is recorded as "
            "applied, but check it: see the recovery plan", revision=step.id)

    def _statement(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
                   context: dict[str, Any]) -> Any:
        """Every statement Django sends for a migration: none once interrupted; count the
        ones that change something (a non-atomic migration's partial apply)."""
        if self.interrupted.is_set():
            raise InterruptedRunError("interrupted: no further statements are sent")
        step = self.running
        # The running atomic migration sent its own COMMIT/ROLLBACK (RunSQL("COMMIT")): what
        # it did is no longer one unit, whatever Django's atomic block does after it.
        atomic = (step if step is not None and step.transactional
                  and self.connection.in_atomic_block else None)
        if atomic is not None and ends_transaction(str(sql)):  # before: the rest may fail
            atomic.broke_transaction = True
        result = execute(sql, params, many, context)
        if atomic is not None and _transaction_ended(self.connection):  # a procedure's COMMIT
            atomic.broke_transaction = True
        text = str(sql).lstrip().lower()
        if not text.startswith(_READS):
            self.writes += 1
        if "_timeout" in text:  # e.g. RunSQL("SET lock_timeout = 0"): the run's are set again
            self.timeouts_changed = True
        return result

    def _left_something(self, step: Step) -> bool:
        """A non-atomic migration failed: did any of it commit?"""
        if self.writes:
            return True
        before = self.recorder.pre_step.get(step.id)
        if before is None or self.side is None:
            return True  # cannot tell: not clean
        try:
            return bool(objects.created_since(self.side, before))
        except psycopg.Error:
            return True

    # -- outcome ----------------------------------------------------------------------------
    def error_of(self, exc: BaseException) -> SafeMigrateError:
        running = self.running
        step = running if running and running.outcome != "applied" else None
        if step is None:
            if isinstance(exc, SafeMigrateError):
                return exc
            from django.db import DatabaseError

            from runner.db.connect import classify_database_error

            configuration = classify_database_error(exc.__cause__ or exc)
            if configuration is not None:  # a privilege, a read-only database (exit 2)
                return configuration
            if isinstance(exc, DatabaseError):
                return DatabaseUnreachableError(
                    f"database error outside any migration: {first_line(mask_text(str(exc)))}")
            return SafeMigrateError(f"unexpected error: {type(exc).__name__}: "
                                    f"{first_line(mask_text(str(exc)))}")
        if isinstance(exc, PartialApplyError):  # _broken_atomic: it says what happened
            return exc
        if isinstance(exc, SafeMigrateError) and step.outcome == "running":
            # Raised before the migration's body ran (its record could not be kept, the
            # runner's session was lost): it did not start; the error says so, with its code.
            step.outcome = "pending"
            return exc
        state = str((step.error or error_info(exc, step.path)).get("sqlstate") or "")
        return step_error(step, exc, interrupted=self.interrupted.is_set(),
                          connection_lost=state.startswith(CONNECTION_LOST))

    def _applied(self) -> set[tuple[str, str]]:
        assert self.side is not None
        rows = self.side.execute(f'SELECT app, name FROM "{self.schema}".django_migrations'
                                 ).fetchall()
        return {(str(a), str(n)) for a, n in rows}

    def read_heads(self) -> list[str] | None:
        if self.side is None or self.side.closed:
            return None
        try:
            return dj.Applied(self._applied()).heads()
        except psycopg.Error:
            return None

    def check_target(self) -> list[str] | None:
        # The session lost here: exit 7, as on the Alembic path (UpgradeDriver.execute).
        applied = self._applied()
        missing = [s.id for s in self.planned if tuple(s.id.split(".", 1)) not in applied]
        if missing:
            self.log.error("verification.failed", missing=missing)
            raise PartialApplyError(f"post-run verification failed: django_migrations does "
                                    f"not record {', '.join(missing)}", kind=VERIFICATION_FAILED)
        return dj.Applied(applied).heads()

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.lock is not None:
            self.lock.close()
        with contextlib.suppress(Exception):
            self.connection.close()
        if self.side is not None:
            self.side.close()

    def build_plan(self, failure: Failure, rollback_file: str) -> RecoveryPlan:
        return recovery.build_plan(failure, current=failure.heads, options=self.options(),
                                   rollback_file=rollback_file,
                                   backwards_sql=self._backwards_sql(failure))

    def _backwards_sql(self, failure: Failure) -> str | None:
        if failure.status != PARTIAL_APPLY or not failure.failed_revision:
            return None
        try:
            return recovery.sqlmigrate(self.executor.loader, self.connection,
                                       failure.failed_revision, backwards=True)
        except Exception:  # noqa: BLE001 - a template only: never hides the outcome
            return None

    def options(self) -> str:
        parts = ["--framework django"]
        if self.settings.django_settings:
            parts.append(f"--settings {self.settings.django_settings}")
        if self.settings.database_alias != "default":
            parts.append(f"--database {self.settings.database_alias}")
        return " ".join(parts)

    def run_extras(self) -> dict[str, Any]:
        import django

        return {"framework": "django", "django_version": django.get_version(),
                "settings": self.settings.django_settings,
                "database_alias": self.settings.database_alias,
                "heads_after": self.heads_after}


def _ms_since(start: float) -> int:
    return round((time.monotonic() - start) * 1000)

