"""Run the project's own env.py, one transaction per migration, under the runner's control.

How (ALEMBIC-NOTES): we build alembic's EnvironmentContext ourselves, as `command.upgrade`
does, and replace its bound `configure` on the instance. The wrapper forces
`transaction_per_migration=True`, prepares whatever connection env.py made (advisory lock,
timeouts, commit of any autobegun transaction so alembic does not treat it as external and
silently roll everything back), and our `fn` is a generator: the code after each `yield step`
runs once that step has committed, and a wrapper around `step.migration_fn` runs inside the
step's transaction before the migration itself.

A migration that lost a lock race (lock_timeout or deadlock) and committed nothing is
retried by re-running env.py: the version table says where to resume.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import psycopg
import sqlalchemy.exc
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from sqlalchemy import event
from sqlalchemy.engine import Connection
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from runner.db import catalog
from runner.db.connect import (
    classify_connect_error,
    classify_database_error,
    connect,
    env_py_failure,
    first_line,
    read_only_error,
)
from runner.db.failures import LOCK_RACE, ends_transaction, error_info, sqlstate_of
from runner.db.lock import AdvisoryLock
from runner.db.monitor import Monitor, sample_interval
from runner.db.sessions import Sessions
from runner.db.xact import begin_step, prepare_session
from runner.durations import to_postgres_ms
from runner.errors import (
    InterruptedRunError,
    PartialApplyError,
    SafeMigrateError,
)
from runner.frameworks.alembic.planning.history import (
    History,
    check_database_revisions,
    check_not_behind,
    revision_source,
)
from runner.frameworks.alembic.planning.transactional import non_transactional_reasons
from runner.frameworks.alembic.probe import (
    ProbeResult,
    check_database,
    check_one_target,
    where_env_py_connects,
)
from runner.frameworks.alembic.project import Project, fresh_attributes
from runner.frameworks.base import Database, Step
from runner.logging import quiet_alembic
from runner.settings import Settings
from runner.upgrade import check_lock, log_failed, log_retry, step_error, unwatch
from runner.urls import SQLALCHEMY_2, mask, mask_text

SIDE_SESSION = "safe-migrate-monitor"  # application_name of the monitor / ledger session
# The session died under the migration: admin shutdown/terminate, crash, connection failure.
CONNECTION_LOST = ("57P01", "57P02", "57P03", "08")


class Hooks(Protocol):
    """The command's say at the points only the migrator sees."""

    def connected(self, db: Database, side: psycopg.Connection[Any]) -> None: ...

    def starting(self, db_heads: tuple[str, ...], pending: list[Step]) -> None: ...

    def before_step(self, step: Step, pid: int | None) -> None: ...


class Migrator:
    def __init__(self, project: Project, settings: Settings, history: History,
                 target: str, *, log: Any, interrupted: threading.Event, hooks: Hooks) -> None:
        self.project = project
        self.settings = settings
        self.history = history
        self.target = target
        self.log = log
        self.interrupted = interrupted
        self.hooks = hooks
        self.records: dict[str, Step] = {}
        self.current: Step | None = None  # the step that is running or failed
        self.db: Database | None = None
        self.side: psycopg.Connection[Any] | None = None  # monitor + catalog queries
        # A fleet worker's sessions, kept across its targets of one database (None: the
        # run opens and closes its own).
        self.sessions: Sessions | None = None
        self.lock: AdvisoryLock | None = None
        self.monitor: Monitor | None = None
        self.db_heads_before: tuple[str, ...] | None = None
        self._configured = False
        self._started = False
        self._pid: int | None = None  # the migration session's backend
        # Its search path: where the unqualified names of its migrations go.
        self.schemas: tuple[str, ...] = ()
        self._autocommit = False  # env.py's connection runs every statement in AUTOCOMMIT
        self._in_step: Step | None = None  # the transactional step running now
        self._timeouts = (f"SET lock_timeout = '{to_postgres_ms(settings.lock_timeout)}'; "
                          "SET statement_timeout = "
                          f"'{to_postgres_ms(settings.statement_timeout)}'")

    # -- public -------------------------------------------------------------------------
    def run(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception(self._lost_lock_race),
            stop=stop_after_attempt(self.settings.lock_retries + 1),
            wait=wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
            before_sleep=self._log_retry,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self._attempt_with_connect_retries()

    @property
    def pid(self) -> int | None:
        """The migration session's backend pid, once env.py connected."""
        return self._pid

    @property
    def applied(self) -> list[Step]:
        return [r for r in self.records.values() if r.outcome == "applied"]

    def failure(self, exc: BaseException) -> SafeMigrateError:
        """Turn whatever ended the run into the SPEC's error (and exit code)."""
        rec = self.current if self.current and self.current.outcome != "applied" else None
        if rec is None:
            return self._failure_outside_migration(exc)
        if isinstance(exc, PartialApplyError) or (
                rec.outcome == "running" and isinstance(exc, SafeMigrateError)):
            return exc  # the runner's own check (a broken transaction, its pre-step record)
        rec.partial = rec.partial or rec.broke_transaction  # its own COMMIT/ROLLBACK
        state = (rec.error or error_info(exc, rec.path)).get("sqlstate") or ""
        return step_error(rec, exc, interrupted=self.interrupted.is_set(),
                          connection_lost=isinstance(exc, sqlalchemy.exc.OperationalError) and (
                              not state or state.startswith(CONNECTION_LOST)))

    def read_heads(self) -> tuple[str, ...] | None:
        if self.side is None or self.db is None:
            return None
        return catalog.version_heads(self.side, self.db.version_schema, self.db.version_table)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        kept = self.sessions
        if kept is None or self.db is None or (self.monitor is not None and self.monitor.running):
            if self.lock is not None:
                self.lock.close()
            if self.side is not None:
                self.side.close()
            return
        # A fleet worker: the lock is released now, as ever; its session and the side
        # session serve the worker's next target of this database, if they are healthy.
        if self.lock is not None:
            if self.lock.release():
                kept.give(self.db.url, self.lock.application_name, self.lock.conn)
            else:
                self.lock.conn.close()
        if self.side is not None:
            kept.give(self.db.url, SIDE_SESSION, self.side)

    # -- attempts -----------------------------------------------------------------------
    def _attempt_with_connect_retries(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception(self._connect_failed),
            stop=stop_after_delay(self.settings.connect_timeout),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self._attempt()

    def _attempt(self) -> None:
        self._configured = False
        self.current = None
        env = EnvironmentContext(self.project.config, self.project.script,
                                 fn=self._steps, destination_rev=self.target)
        env.configure = functools.partial(self._configure, env.configure)  # type: ignore[method-assign]
        with env, fresh_attributes(self.project.config):
            self.project.script.run_env()

    def _connect_failed(self, exc: BaseException) -> bool:
        return (not self._configured and isinstance(exc, sqlalchemy.exc.OperationalError)
                and classify_connect_error(getattr(exc, "orig", exc)) is None)

    def _lost_lock_race(self, exc: BaseException) -> bool:
        rec = self.current
        return (rec is not None and rec.outcome == "failed" and not rec.partial
                and not self.interrupted.is_set() and sqlstate_of(exc) in LOCK_RACE)

    def _log_retry(self, state: RetryCallState) -> None:
        assert self.current is not None
        log_retry(self.log, self.current, state.upcoming_sleep)

    # -- env.py hooks -------------------------------------------------------------------
    def _configure(self, original: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        connection: Connection | None = kwargs.get("connection")
        if connection is not None and not kwargs.get("as_sql"):
            self._prepare(connection, kwargs)
        kwargs["transaction_per_migration"] = True
        if not self.settings.debug:
            quiet_alembic()
        original(*args, **kwargs)

    def _prepare(self, connection: Connection, opts: dict[str, Any]) -> None:
        # Anything env.py ran (SET search_path, SET ROLE) autobegan a transaction, or env.py
        # began one itself: commit it, or alembic takes it for an external transaction and
        # runs every migration in it (ALEMBIC-NOTES).
        end_env_py_transaction(connection)
        self._configured = True
        # An env.py engine with isolation_level="AUTOCOMMIT" (Dagster's, say): every
        # statement commits on its own, so no step is transactional, whatever its source.
        self._autocommit = (
            connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            or getattr(connection.connection.dbapi_connection, "autocommit", False) is True)
        # The timeouts are set again at every step's start (begin_step).
        settings = [*self._timeouts.split("; "), "SET application_name = 'safe-migrate-migration'"]
        if (connection.dialect.server_version_info or (0,)) >= (14,):
            settings.append("SET idle_session_timeout = 0")  # it idles while we wait for the lock
        session = prepare_session(connection, settings)
        if session.read_only or session.in_recovery:  # refused before the lock, before anything
            raise read_only_error(session.in_recovery)
        self._pid = session.pid
        self.schemas = session.schemas
        target = where_env_py_connects(connection, opts)
        commit_now(connection)
        event.listen(connection, "before_cursor_execute", self._before_statement)
        event.listen(connection, "commit", self._transaction_ended)
        event.listen(connection, "rollback", self._transaction_ended)
        if self.db is None:
            self._open_side(target)
        else:  # a second database / version table: never migrated without its own lock
            check_one_target(ProbeResult(self.db.url, self.db.version_table,
                                         self.db.version_schema), target)

    def _open_side(self, target: ProbeResult) -> None:
        url, table, schema = target.url, target.version_table, target.version_schema
        check_database(url, self.settings.database_url)  # before the lock, before anything
        if self.sessions is None:
            self.side = connect(url, timeout=self.settings.connect_timeout,
                                application_name=SIDE_SESSION)
        else:
            self.side = self.sessions.take(url, application_name=SIDE_SESSION,
                                           timeout=self.settings.connect_timeout)
        # libpq has both from the connection's start (ParameterStatus): no round trip.
        version_num = self.side.info.server_version
        version = (self.side.info.parameter_status("server_version")
                   or catalog.server_version(self.side))
        self.db = Database(url=url, version_table=table, version_schema=schema,
                           server_version_num=version_num, server_version=version)
        self.log.info("database", url=mask(url), server_version=version,
                      version_table=f"{schema}.{table}")
        self.lock = AdvisoryLock.open(url, schema, table, timeout=self.settings.connect_timeout,
                                      run_id=self.settings.run_id, log=self.log,
                                      interrupted=self.interrupted, sessions=self.sessions)
        self.lock.acquire(self.settings.advisory_lock_wait)
        self.monitor = Monitor(self.side, self.interrupted,
                               interval=sample_interval(self.settings.lock_timeout))
        self.monitor.start()
        self.hooks.connected(self.db, self.side)

    def _before_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.interrupted.is_set():
            raise InterruptedRunError("interrupted: no further statements are sent")
        rec = self._in_step
        if rec is not None and ends_transaction(statement):
            rec.broke_transaction = True

    def _transaction_ended(self, *_: Any) -> None:
        # connection.commit()/rollback() called by the migration itself, inside its step.
        if self._in_step is not None:
            self._in_step.broke_transaction = True

    def _steps(self, heads: tuple[str, ...], context: MigrationContext) -> Iterator[RevisionStep]:
        self.history.load()  # built by the survey already; here is where alembic builds it
        check_database_revisions(self.history, tuple(heads))
        steps: list[RevisionStep] = list(
            self.project.script._upgrade_revs(self.target, heads))  # type: ignore[arg-type]
        if not steps and not self._started:
            check_not_behind(self.history, self.target, tuple(heads))
        if not self._started:
            self._started = True
            self.db_heads_before = tuple(heads)
            for step in steps:
                self.records[step.revision.revision] = self._record(step)
            self.log.info("preflight.ok", current=list(heads), pending=len(steps),
                          target=self.target)
            self.hooks.starting(tuple(heads), list(self.records.values()))
        for step in steps:
            rec = self.records.get(step.revision.revision) or self._record(step)
            self.records[rec.id] = rec
            step.migration_fn = self._wrap(step.migration_fn, rec, context)
            yield step
            # Reached only once alembic committed the step (version row included).
            rec.outcome = "applied"
            rec.duration_ms = _ms_since(rec.started_at)
            if rec.broke_transaction:
                rec.outcome = "partial"
                rec.partial = True
                self.current = rec
                log_failed(self.log, rec, reason="ran its own COMMIT or ROLLBACK")
                raise PartialApplyError(
                    f"migration {rec.id} ran its own COMMIT or ROLLBACK inside its "
                    "transaction: what it did is no longer one unit (part of it may have been "
                    "undone or committed apart from the version row); it is recorded as "
                    "applied, but check it: see the recovery plan", revision=rec.id)
            self.log.info("migration.done", revision=rec.id, duration_ms=rec.duration_ms,
                          attempts=rec.attempts, lock_wait_ms=rec.lock_wait_ms)

    def _record(self, step: RevisionStep) -> Step:
        script = step.revision
        down = script.down_revision
        source = revision_source(script)
        return Step(
            id=script.revision, title="",
            previous=list(down) if isinstance(down, (tuple, list)) else down,
            path=script.path, non_transactional_reasons=(
                ["env.py's connection is AUTOCOMMIT"] if self._autocommit
                else non_transactional_reasons(source)))

    def _wrap(self, fn: Callable[..., None], rec: Step,
              context: MigrationContext) -> Callable[..., None]:
        @functools.wraps(fn)
        def run_step(**kw: Any) -> None:
            if self.interrupted.is_set():
                raise InterruptedRunError("interrupted before the next migration")
            assert self.lock is not None
            check_lock(self.lock, rec, self.log)
            self.current = rec
            rec.attempts += 1
            rec.error = None
            rec.outcome = "running"
            self.hooks.before_step(rec, self._pid)
            assert context.connection is not None and self.monitor is not None
            # The step's transaction id tells later whether anything of the step committed
            # before a failure (autocommit_block, a raw COMMIT...).
            xid = begin_step(context.connection, self._timeouts)
            rec.started_at = time.monotonic()
            self.log.info("migration.start", revision=rec.id,
                          down_revision=rec.previous, attempt=rec.attempts,
                          transactional=rec.transactional)
            assert self._pid is not None
            self.monitor.watch(self._pid)
            self._in_step = rec if rec.transactional else None
            try:
                fn(**kw)
            except BaseException as exc:
                self._in_step = None
                rec.outcome = "failed"
                rec.error = error_info(exc, rec.path)
                rec.partial = self._committed(xid, rec) or rec.broke_transaction
                unwatch(self.monitor, rec)
                rec.duration_ms = _ms_since(rec.started_at)
                log_failed(self.log, rec)
                raise
            self._in_step = None
            unwatch(self.monitor, rec)

        return run_step

    def _committed(self, xid: str, rec: Step) -> bool:
        assert self.monitor is not None
        try:
            return self.monitor.xact_committed(xid)
        except psycopg.Error:
            # Cannot ask (the server went away): a transactional step commits atomically with
            # its version row, so nothing of it is left; any other may have left something.
            return not rec.transactional

    def _failure_outside_migration(self, exc: BaseException) -> SafeMigrateError:
        if isinstance(exc, SafeMigrateError) or not self._configured:
            return env_py_failure(exc)
        # alembic creating or reading the version table: a privilege, a read-only database,
        # a version_table_schema that does not exist (exit 2).
        configuration = classify_database_error(exc)
        if configuration is not None:
            return configuration
        return SafeMigrateError(f"unexpected error: {type(exc).__name__}: "
                                f"{first_line(mask_text(str(exc)))}")


def end_env_py_transaction(connection: Connection) -> None:
    """Commit what env.py's connection did so far, so that alembic gives each migration its
    own transaction.

    An env.py that opened `with engine.begin()` / `with connection.begin()` around
    configure() would otherwise have alembic run the whole range in that one transaction
    (transaction_per_migration is ignored in an external transaction). Once we committed it,
    SQLAlchemy would refuse every later statement inside that `with` block ("Can't operate on
    closed transaction inside context manager"): so the block is detached from the
    connection, and at its end finds its transaction closed and does nothing.
    """
    commit_now(connection)
    if getattr(connection, "_trans_context_manager", None) is not None:
        connection._trans_context_manager = None  # SQLAlchemy's own exit path tolerates it


def commit_now(connection: Connection) -> None:
    """Commit whatever the connection has open, on SQLAlchemy 2 and 1.4 alike: 1.4's
    (non-future) Connection has no commit(), and its library-level autocommit leaves the
    DBAPI transaction that a SET or SELECT began open, with no SQLAlchemy Transaction."""
    transaction = connection.get_transaction()
    if transaction is not None:
        transaction.commit()
    elif not SQLALCHEMY_2:
        connection.connection.commit()


def _ms_since(start: float | None) -> int | None:
    return None if start is None else round((time.monotonic() - start) * 1000)
