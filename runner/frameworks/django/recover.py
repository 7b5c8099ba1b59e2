"""`safe-migrate recover --framework django`: the same safety rules as the Alembic path's
(runner/frameworks/alembic/commands/recover.py), in Django's terms.

- the failure comes from the run ledger (any machine), else from this database's artifacts;
- under the advisory lock, before any change, everything is read again: the failure still
  unresolved, the failed migration still unrecorded in django_migrations, each leftover with
  its recorded definition; anything else: exit 3, nothing changed;
- every DROP runs with lock_timeout and upgrade's retries.
Django records a migration only once it succeeded, so a failed one needs no `--fake`
unapply: the rollback SQL of its leftovers is the whole recovery.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import psycopg

from runner.db.connect import connect
from runner.db.lock import AdvisoryLock
from runner.errors import PreflightError
from runner.frameworks.django import project as dj
from runner.frameworks.django import recovery
from runner.logging import get_logger
from runner.recovery import execute
from runner.recovery import plan as core_plan
from runner.recovery.runs import PastRun, RunHistory, still_open
from runner.settings import Settings


class DjangoRecovery:
    def __init__(self, settings: Settings, connection: Any, conn: psycopg.Connection[Any],
                 log: Any) -> None:
        self.settings = settings
        self.connection = connection
        self.conn = conn
        self.log = log
        row = conn.execute("SELECT current_schema()").fetchone()
        self.schema = str(row[0] if row else "public")
        self.history = RunHistory.open(
            conn, version_schema=self.schema, version_table=dj.VERSION_TABLE,
            ledger_table=settings.ledger_table, use_ledger=settings.ledger,
            artifacts_root=settings.artifacts_root)

    def applied(self) -> set[tuple[str, str]]:
        exists = self.conn.execute("SELECT to_regclass(%s)",
                                   (f'"{self.schema}".{dj.VERSION_TABLE}',)).fetchone()
        if not exists or exists[0] is None:
            return set()
        rows = self.conn.execute(
            f'SELECT app, name FROM "{self.schema}".{dj.VERSION_TABLE}').fetchall()
        return {(str(a), str(n)) for a, n in rows}

    def is_applied(self, step_id: str) -> bool:
        app, _, name = step_id.partition(".")
        return (app, name) in self.applied()

    def unresolved(self) -> PastRun | None:
        runs = still_open(self.history.unresolved(), self.is_applied)
        return runs[0] if runs else None

    def failure_of(self, run: PastRun) -> core_plan.Failure:
        """The recorded failure; for a run that died mid-step, what is new since its
        pre-step record, attributed to the migration's code."""
        return execute.failure_of(self.conn, run, lambda: dj.Applied(self.applied()).heads(),
                                  "non-atomic")

    def plan(self, failure: core_plan.Failure, run: PastRun) -> core_plan.RecoveryPlan:
        backwards = None
        if failure.failed_revision and failure.status == core_plan.PARTIAL_APPLY:
            try:
                from django.db.migrations.loader import MigrationLoader

                backwards = recovery.sqlmigrate(MigrationLoader(None), self.connection,
                                                failure.failed_revision, backwards=True)
            except Exception:  # noqa: BLE001 - a template only (the file may be gone)
                backwards = None
        rollback = (run.directory / "rollback.sql").resolve() if run.directory else None
        return recovery.build_plan(failure, current=dj.Applied(self.applied()).heads(),
                                   options=options(self.settings),
                                   rollback_file=str(rollback or "rollback.sql"),
                                   backwards_sql=backwards)

    def lock(self) -> AdvisoryLock:
        lock = AdvisoryLock.open(dj.sqlalchemy_url(self.connection), self.schema,
                                 dj.VERSION_TABLE, timeout=self.settings.connect_timeout,
                                 run_id=self.settings.run_id, log=self.log,
                                 interrupted=threading.Event())
        try:
            lock.acquire(self.settings.advisory_lock_wait)
        except BaseException:
            lock.close()
            raise
        return lock

    def carry_out(self, run: PastRun, failure: core_plan.Failure) -> None:
        """Under the lock: re-read everything, then drop the unchanged recorded leftovers."""
        failure = self.failure_of(run)
        if not self.history.still_unresolved(run):
            raise PreflightError(f"run {run.run_id} was resolved meanwhile: nothing was changed")
        if failure.failed_revision and self.is_applied(failure.failed_revision):
            raise PreflightError(
                f"{failure.failed_revision} is recorded as applied since the failure (another "
                "run, or --fake by hand): nothing was changed; check it, then `safe-migrate "
                f"recover {options(self.settings)} --mark-resolved`")
        drops = execute.unchanged_leftovers(
            self.conn, failure, f"safe-migrate recover {options(self.settings)} --mark-resolved")
        execute.drop(self.conn, drops, self.settings, self.log)
        execute.resolve_recovered(self.history, run, failure)
        self.log.info("recovery.done", status=failure.status, run=run.run_id,
                      dropped=len(drops))


def options(settings: Settings) -> str:
    parts = ["--framework django"]
    if settings.django_settings:
        parts.append(f"--settings {settings.django_settings}")
    if settings.database_alias != "default":
        parts.append(f"--database {settings.database_alias}")
    return " ".join(parts)


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    connection = dj.setup(settings.django_settings, settings.database_alias,
                          settings.database_url)
    with connect(dj.sqlalchemy_url(connection), timeout=settings.connect_timeout,
                 application_name="safe-migrate-recover") as conn:
        return execute.recover(DjangoRecovery(settings, connection, conn, log), args, log)
