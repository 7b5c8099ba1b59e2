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
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from runner import __version__
from runner.artifacts import Artifacts, Journal, write_termination_log
from runner.db import catalog, objects
from runner.db.connect import connect, first_line
from runner.db.failures import LOCK_RACE, ends_transaction, error_info, sqlstate_of
from runner.db.ledger import parse_table
from runner.db.lock import AdvisoryLock, lock_key
from runner.db.monitor import Monitor, sample_interval
from runner.durations import to_postgres_ms
from runner.errors import (
    DatabaseUnreachableError,
    ExitCode,
    InterruptedRunError,
    MigrationFailedError,
    PartialApplyError,
    PreflightError,
    SafeMigrateError,
)
from runner.frameworks.base import Step
from runner.frameworks.django import project as dj
from runner.frameworks.django import recovery
from runner.lifecycle import interruptible
from runner.logging import get_logger
from runner.recovery.plan import CLEAN_ROLLBACK, PARTIAL_APPLY, VERIFICATION_FAILED, Failure
from runner.recovery.recorder import Recorder
from runner.settings import Settings
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
    finding: Future[Path] | None = None
    if settings.schema_diff:
        from runner.schema import snapshot

        finding = snapshot.start_find_pg_dump(settings.pg_dump)
    with embedded(settings, log), interruptible(log) as interrupted:
        connection = dj.setup(settings.django_settings, settings.database_alias,
                              settings.database_url)
        try:
            loader = dj.load_graph()  # from the files alone: conflicts, missing parents
            dj.check_model_changes(loader, args.model_changes, log)
            lint_pending(connection, settings, args, log)
        except PreflightError as exc:
            log.error("preflight.failed", reason=exc.message)
            raise
        job = DjangoUpgrade(settings, connection, loader, artifacts, log, finding, interrupted)
        return job.execute()


def lint_pending(connection: Any, settings: Settings, args: argparse.Namespace,
                 log: Any) -> None:
    """--lint: squawk over each pending migration's SQL, as on the Alembic path: before the
    lock and before anything runs; --lint error refuses on any finding (exit 3)."""
    if args.lint == "off":
        return
    from django.db import DatabaseError
    from django.db.migrations.exceptions import NodeNotFoundError
    from django.db.migrations.executor import MigrationExecutor

    started = time.monotonic()
    try:
        executor = MigrationExecutor(connection)  # reads django_migrations
        migrations = dj.plan(executor, dj.targets(executor.loader, settings.target),
                             settings.target)
    except (SafeMigrateError, DatabaseError, NodeNotFoundError):
        return  # the run's own preflight (or connect) refuses it, with its exit code
    if not migrations:
        return
    # Only now: runner.lint loads alembic (and SQLAlchemy) through the Alembic path's modules.
    from runner import github, lint
    from runner.frameworks.django.inspect import describe_all, lint_findings

    pending = describe_all(executor.loader, migrations)
    findings, _ = lint_findings(pending, args.lint, args.lint_rules, log)
    log.info("lint.done", revisions=len(pending), findings=len(findings),
             duration_ms=round((time.monotonic() - started) * 1000))
    github.report_lint([f.to_dict() for f in findings], args.lint)
    lint.enforce(findings, args.lint, log)  # logs lint.finding; error: PreflightError


@contextlib.contextmanager
def embedded(settings: Settings, log: Any) -> Iterator[None]:
    """--embedded: a throwaway server whose URL overrides the alias's connection."""
    if not settings.embedded:
        yield
        return
    from runner.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        settings.database_url = server.url()
        log.info("embedded.started", url=mask(settings.database_url),
                 pg_dump=str(server.pg_dump))
        if settings.pg_dump is None:
            settings.pg_dump = str(server.pg_dump)
        yield


class DjangoUpgrade:
    def __init__(self, settings: Settings, connection: Any, loader: Any, artifacts: Artifacts,
                 log: Any, finding: Future[Path] | None, interrupted: threading.Event) -> None:
        self.settings = settings
        self.connection = connection
        self.loader = loader
        self.artifacts = artifacts
        self.log = log
        self.finding = finding
        self.interrupted = interrupted
        self.url = dj.sqlalchemy_url(connection)
        self.started = datetime.now(UTC)
        self.steps: list[Step] = []
        self.current: Step | None = None
        self.side: psycopg.Connection[Any] | None = None
        self.lock: AdvisoryLock | None = None
        self.monitor: Monitor | None = None
        self.pid: int | None = None
        self.schema = "public"
        self.server_version: str | None = None
        self.pg_dump: Path | None = None
        self.before: str | None = None
        self.invalid_before: set[tuple[str, str]] = set()
        self.journal: Journal | None = None
        self.recorder = Recorder(settings.run_id, log=log)
        self.failure: Failure | None = None
        self.heads_before: list[str] = []
        self.executor: Any = None
        self.writes = 0  # statements of the running step that changed something
        # The running atomic migration sent its own COMMIT/ROLLBACK (RunSQL("COMMIT")): what
        # it did is no longer one unit, whatever Django's atomic block does after it.
        self.broke_transaction = False
        # Session-level SETs outlive each migration's transaction: sent once at connect,
        # again only after a migration that touched a timeout (a round trip saved per step).
        self.timeouts_changed = False
        self.timeouts = (f"SET lock_timeout = '{to_postgres_ms(settings.lock_timeout)}'; "
                         "SET statement_timeout = "
                         f"'{to_postgres_ms(settings.statement_timeout)}'")

    # -- the run --------------------------------------------------------------------------
    def execute(self) -> int:
        error: SafeMigrateError | None = None
        try:
            try:
                self._run()
                error = self._verify()
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code
                error = self._error(exc)
                if isinstance(error, PreflightError):
                    self.log.error("preflight.failed", reason=error.message)
        finally:
            code = self._finish(error)
        if error is not None:
            raise error
        return int(code)

    def _run(self) -> None:
        self._connect()
        from django.db.migrations.exceptions import NodeNotFoundError
        from django.db.migrations.executor import MigrationExecutor

        try:  # again, under the lock: what django_migrations says now
            self.executor = MigrationExecutor(self.connection)
        except NodeNotFoundError as exc:
            raise dj.node_not_found(exc) from None
        loader = self.executor.loader
        dj.check_history(loader, self.connection)
        self.heads_before = dj.Applied(set(loader.applied_migrations)).heads()
        migrations = dj.plan(self.executor, dj.targets(loader, self.settings.target),
                             self.settings.target)
        self.steps = [dj.step_of(m, loader) for m in migrations]
        self.log.info("preflight.ok", current=self.heads_before, pending=len(self.steps),
                      target=self.settings.target)
        self.recorder.check_unresolved(lambda step_id: tuple(step_id.split(".", 1))
                                       in self.executor.loader.applied_migrations)
        if self.steps:
            assert self.side is not None
            invalid = catalog.invalid_indexes(self.side) + catalog.not_valid_constraints(
                self.side)
            self.invalid_before = {(o["schema"], o["name"]) for o in invalid}
            self.journal = self.artifacts.journal()
            self.before = self._snapshot("schema-before.sql", "before")
        self._write_run(None)
        self._apply_all(migrations)

    def _connect(self) -> None:
        from django.db import DatabaseError

        # The runner's own session first: connect retries, exit 7 / exit 2 classification.
        self.side = connect(self.url, timeout=self.settings.connect_timeout,
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
                               "pg_is_in_recovery()")
                pid, schema, read_only, in_recovery = cursor.fetchone()
        except DatabaseError as exc:
            raise DatabaseUnreachableError(
                f"cannot connect to {mask(self.url)}: {first_line(mask_text(str(exc)))}"
            ) from None
        if read_only or in_recovery:
            from runner.db.connect import read_only_error

            raise read_only_error(bool(in_recovery))
        self.pid, self.schema = int(pid), str(schema or "public")
        self.server_version = catalog.server_version(self.side)
        self.log.info("database", url=mask(self.url), server_version=self.server_version,
                      version_table=f"{self.schema}.{dj.VERSION_TABLE}")
        lock_conn = connect(self.url, timeout=self.settings.connect_timeout,
                            application_name=f"safe-migrate-lock {self.settings.run_id}")
        key = lock_key(catalog.current_database(lock_conn), self.schema, dj.VERSION_TABLE)
        self.lock = AdvisoryLock(lock_conn, key, log=self.log, interrupted=self.interrupted)
        self.lock.acquire(self.settings.advisory_lock_wait)
        self.monitor = Monitor(self.side, self.interrupted,
                               interval=sample_interval(self.settings.lock_timeout))
        self.monitor.start()
        if self.finding is not None:
            from runner.schema import snapshot

            self.pg_dump = self.finding.result()
            snapshot.check_pg_dump(self.pg_dump, catalog.server_version_num(self.side))
        self.recorder.open(self.side, version_schema=self.schema,
                           version_table=dj.VERSION_TABLE,
                           ledger_table=self.settings.ledger_table,
                           use_ledger=self.settings.ledger, command="upgrade",
                           target=self.settings.target, database_url=mask(self.url),
                           tool_version=__version__)

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
                for migration, step in zip(migrations, self.steps, strict=True):
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

        def log_retry(retry: RetryCallState) -> None:
            assert step.error is not None and retry.upcoming_sleep is not None
            self.log.warning("migration.retry", revision=step.id, attempt=step.attempts,
                             sleep_s=round(retry.upcoming_sleep, 3),
                             sqlstate=step.error["sqlstate"], error=step.error["message"],
                             blocking_pids=[b["pid"] for b in step.blockers],
                             blockers=step.blockers)
            step.outcome = "pending"

        for attempt in Retrying(
                retry=retry_if_exception(lambda exc: self._lost_lock_race(step, exc)),
                stop=stop_after_attempt(self.settings.lock_retries + 1),
                wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
                before_sleep=log_retry, sleep=self._sleep, reraise=True):
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
        self._check_lock(step)
        self.current = step
        step.attempts += 1
        step.error = None
        step.outcome = "running"
        self._before_step(step)
        if self.timeouts_changed:  # a migration changed them: set again, before the next
            with self.connection.cursor() as cursor:
                cursor.execute(self.timeouts)
            self.timeouts_changed = False
        self.writes = 0
        self.broke_transaction = False
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
            step.partial = (self.broke_transaction if step.transactional
                            else self._left_something(step))
            self._unwatch(step)
            step.duration_ms = _ms_since(started)
            self.log.error("migration.failed", revision=step.id, attempt=step.attempts,
                           partial=step.partial, duration_ms=step.duration_ms, **step.error,
                           blocking_pids=[b["pid"] for b in step.blockers])
            raise
        self._unwatch(step)
        step.outcome = "applied"
        step.duration_ms = _ms_since(started)
        if step.transactional and self.broke_transaction:
            self._broken_atomic(step)
        self.log.info("migration.done", revision=step.id, duration_ms=step.duration_ms,
                      attempts=step.attempts, lock_wait_ms=step.lock_wait_ms)
        return state

    def _broken_atomic(self, step: Step) -> None:
        """An atomic migration ran its own COMMIT/ROLLBACK and then succeeded: Django
        recorded it, but part of it may have been undone or committed on its own (exit 6)."""
        step.outcome = "partial"
        step.partial = True
        self.log.error("migration.failed", revision=step.id, attempt=step.attempts,
                       partial=True, duration_ms=step.duration_ms,
                       reason="ran its own COMMIT or ROLLBACK")
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
        step = self.current
        atomic = step is not None and step.transactional and self.connection.in_atomic_block
        if atomic and ends_transaction(str(sql)):  # before: the rest may fail
            self.broke_transaction = True
        result = execute(sql, params, many, context)
        if atomic and _transaction_ended(self.connection):  # a procedure's COMMIT, say
            self.broke_transaction = True
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

    def _before_step(self, step: Step) -> None:
        assert self.journal is not None
        self.journal.record({"running_revision": step.id, "attempt": step.attempts})
        if step.transactional:
            return
        try:
            self.recorder.before_step(step.id, step.previous, step.path, step.attempts,
                                      self.pid)
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachableError(
                f"lost the runner's own session before migration {step.id}, so what it could "
                f"leave behind cannot be recorded: it did not start "
                f"({first_line(mask_text(str(exc)))})", revision=step.id) from None
        self.recorder.keep(self.artifacts, step.id)

    def _check_lock(self, step: Step) -> None:
        assert self.lock is not None
        if self.lock.alive():
            return
        self.lock.held = False
        self.log.error("lock.lost", key=self.lock.key, next_revision=step.id)
        raise DatabaseUnreachableError(
            "the advisory lock's session was lost, so another runner may start: stopped "
            f"before migration {step.id}, which did not run", revision=step.id)

    def _unwatch(self, step: Step) -> None:
        assert self.monitor is not None
        blockers, waited = self.monitor.unwatch()
        step.lock_wait_ms += round(waited * 1000)
        if blockers:
            step.blockers = [b.to_dict() for b in blockers]

    # -- outcome ----------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> SafeMigrateError:
        step = self.current if self.current and self.current.outcome != "applied" else None
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
        info = step.error or error_info(exc, step.path)
        where = f"migration {step.id} ({info['file']}:{info['line']})" if info.get(
            "line") else f"migration {step.id} ({step.path})"
        what = (f"SQLSTATE {info['sqlstate']}: " if info.get("sqlstate") else "") + str(
            info["message"]) + (f"; DETAIL: {info['detail']}" if info.get("detail") else "")
        if step.partial:
            step.outcome = "partial"
            return PartialApplyError(f"{where} failed after committing part of its work "
                                     f"({what}): see the recovery plan", revision=step.id)
        if self.interrupted.is_set() or isinstance(exc, InterruptedRunError):
            step.outcome = "interrupted"
            return InterruptedRunError(f"interrupted during {where}; it was rolled back",
                                       revision=step.id)
        state = str(info.get("sqlstate") or "")
        if state.startswith(CONNECTION_LOST):
            return DatabaseUnreachableError(f"connection lost during {where} ({what}); it was "
                                            "not committed", revision=step.id)
        blockers = "".join(f"; blocked by pid {b['pid']} ({b['query']})" for b in step.blockers)
        return MigrationFailedError(f"{where} failed and was rolled back ({what}){blockers}",
                                    revision=step.id)

    def _applied_now(self) -> set[tuple[str, str]] | None:
        if self.side is None or self.side.closed:
            return None
        try:
            rows = self.side.execute(f'SELECT app, name FROM "{self.schema}".django_migrations'
                                     ).fetchall()
        except psycopg.Error:
            return None
        return {(str(a), str(n)) for a, n in rows}

    def _verify(self) -> SafeMigrateError | None:
        applied = self._applied_now() or set()
        missing = [s.id for s in self.steps if tuple(s.id.split(".", 1)) not in applied]
        if missing:
            self.log.error("verification.failed", missing=missing)
            return PartialApplyError(f"post-run verification failed: django_migrations does "
                                     f"not record {', '.join(missing)}", kind=VERIFICATION_FAILED)
        if self.steps and self.side is not None:
            left = [o for o in catalog.invalid_indexes(self.side)
                    if (o["schema"], o["name"]) not in self.invalid_before]
            if left:
                names = ", ".join(f"{o['schema']}.{o['name']}" for o in left)
                self.log.error("verification.failed", invalid_indexes=names)
                return PartialApplyError(f"post-run verification failed: this run left "
                                         f"invalid index(es) {names}", kind=VERIFICATION_FAILED)
        self.log.info("verification.ok", heads=dj.Applied(applied).heads())
        return None

    def _finish(self, error: SafeMigrateError | None) -> ExitCode:
        code = ExitCode.OK if error is None else error.exit_code
        applied_now = self._applied_now()
        heads_after = dj.Applied(applied_now).heads() if applied_now is not None else []
        try:
            if code in (ExitCode.MIGRATION_FAILED, ExitCode.PARTIAL_APPLY):
                self.failure = self._record_failure(error, heads_after)
            if self.before is not None or self.recorder.pre_step:
                after = self._snapshot("schema-after.sql", "after")
                if after is not None and self.before is not None:
                    from runner.schema import snapshot

                    self.artifacts.write_text("schema.diff", snapshot.diff(self.before, after))
        except Exception as exc:  # noqa: BLE001 - an artifact must never hide the outcome
            self.log.error("artifacts.failed", error=f"{type(exc).__name__}: "
                           f"{first_line(mask_text(str(exc)))}")
        finally:
            self._record_outcome(error, code, heads_after)
            try:
                if self.failure is not None:
                    self._write_plan(self.failure, heads_after)
            except Exception as exc:  # noqa: BLE001 - a full disk must not hide the exit code
                self.log.error("artifacts.failed", error=f"{type(exc).__name__}: {exc}")
            self._close()
            applied = sum(1 for s in self.steps if s.outcome == "applied")
            self._write_run(error, final=True, heads_after=heads_after)
            self.artifacts.report_unwritten(self.log, error, self.recorder.where_recorded)
            self.log.info("run.done", outcome=_outcome(code), exit_code=int(code),
                          applied=applied)
            write_termination_log(self.settings.termination_log,
                                  f"safe-migrate {_outcome(code)}: exit {int(code)}, {applied} "
                                  "applied" + (f"; {error.message}" if error else ""))
        return code

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.lock is not None:
            self.lock.close()
        if self.journal is not None:
            self.journal.close()
        with contextlib.suppress(Exception):
            self.connection.close()
        if self.side is not None:
            self.side.close()

    def _record_failure(self, error: SafeMigrateError | None, heads: list[str]) -> Failure:
        step = self.current
        message = error.message if error else None
        if error is not None and error.data.get("kind") == VERIFICATION_FAILED:
            return self.recorder.failure(status=VERIFICATION_FAILED, revision=None,
                                         down_revision=None, path=None, heads=heads,
                                         error=message, expected=[s.id for s in self.steps])
        status = PARTIAL_APPLY if step is not None and step.partial else CLEAN_ROLLBACK
        raised = step.error if step is not None and step.error else {}
        line = raised.get("line") if step is not None and raised.get("file") == step.path else None
        return self.recorder.failure(
            status=status, revision=step.id if step else None,
            down_revision=step.previous if step else None, path=step.path if step else None,
            heads=heads, error=message, line=line)

    def _record_outcome(self, error: SafeMigrateError | None, code: ExitCode,
                        heads_after: list[str]) -> None:
        if self.recorder.ledger is None:
            return
        try:
            self.recorder.finish(
                outcome=_outcome(code), exit_code=int(code),
                error=mask_text(error.message) if error else None,
                heads_before=self.heads_before, heads_after=heads_after,
                steps=[s.to_dict() for s in self.steps if s.attempts],
                recovery=self.failure.to_dict() if self.failure else None)
        except (psycopg.Error, SafeMigrateError) as exc:
            self.log.error("ledger.failed", error=first_line(mask_text(str(exc))))

    def _write_plan(self, failure: Failure, heads: list[str]) -> None:
        from runner.recovery import plan as recovery_plan

        plan = recovery.build_plan(failure, current=heads, options=self.options(),
                                   rollback_file=str(self.artifacts.directory.resolve()
                                                     / "rollback.sql"),
                                   backwards_sql=self._backwards_sql(failure))
        self.artifacts.write_json("recovery-plan.json", plan.to_dict())
        self.artifacts.write_text("recovery-plan.md", recovery_plan.render_markdown(plan))
        self.artifacts.write_text("rollback.sql", recovery_plan.rollback_script(plan))
        self.log.warning("recovery.plan", status=plan.status, stamp_target=plan.stamp_target,
                         leftovers=len(plan.leftover_objects),
                         leftovers_known=plan.leftovers_known, commands=plan.commands,
                         file=str(self.artifacts.directory / "recovery-plan.md"))

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

    def _snapshot(self, name: str, label: str) -> str | None:
        if self.pg_dump is None:
            return None
        from runner.schema import snapshot

        exclude = [(self.schema, dj.VERSION_TABLE),
                   parse_table(self.settings.ledger_table, self.schema)]
        snap = snapshot.take_snapshot(self.pg_dump, self.url, exclude,
                                      lock_wait_timeout=max(self.settings.lock_timeout, 5.0))
        self.artifacts.write_text(name, snap.text)
        self.log.info("schema.snapshot", which=label, file=name,
                      duration_ms=round(snap.seconds * 1000), bytes=len(snap.text))
        return snap.text

    def _write_run(self, error: SafeMigrateError | None, *, final: bool = False,
                   heads_after: list[str] | None = None) -> None:
        import django

        code = (int(error.exit_code) if error else 0) if final else None
        identity = self.recorder.identity
        ledger = self.recorder.ledger
        data = {
            "run_id": self.settings.run_id, "framework": "django",
            "tool_version": __version__, "django_version": django.get_version(),
            "python_version": platform.python_version(), "server_version": self.server_version,
            "database_url": mask(self.url), "database": identity.to_dict() if identity else None,
            "version_table": f"{self.schema}.{dj.VERSION_TABLE}",
            "ledger": ledger.qualified if ledger else None,
            "settings": self.settings.django_settings, "database_alias":
                self.settings.database_alias, "target": self.settings.target,
            "started_at": self.started.isoformat(),
            "ended_at": None if code is None else datetime.now(UTC).isoformat(),
            "outcome": "running" if code is None else _outcome(ExitCode(code)),
            "exit_code": code, "error": error.message if error else None,
            "running_revision": None,  # while it runs: the journal (progress.json)
            "heads_before": self.heads_before,
            "heads_after": heads_after,
            "migrations": [s.to_dict() for s in self.steps if s.attempts],
            "pending": [s.id for s in self.steps if not s.attempts],
            "recovery": self.failure.to_dict() if self.failure else None,
        }
        # A full disk mid-run: the ledger holds the run; said once at its end.
        self.artifacts.write_run(data, final=final, recorded=self.recorder.ledger is not None
                                 or self.failure is not None)


def _ms_since(start: float) -> int:
    return round((time.monotonic() - start) * 1000)


_OUTCOMES = {ExitCode.OK: "success", ExitCode.USAGE: "usage-error",
             ExitCode.PREFLIGHT: "preflight-refused", ExitCode.LOCK_BUSY: "lock-busy",
             ExitCode.MIGRATION_FAILED: "migration-failed", ExitCode.PARTIAL_APPLY: "partial-apply",
             ExitCode.UNREACHABLE: "unreachable", ExitCode.INTERRUPTED: "interrupted"}


def _outcome(code: ExitCode) -> str:
    """The same outcome names as the Alembic path's (runner.frameworks.alembic.commands.upgrade)."""
    return _OUTCOMES.get(code, "internal-error")
