"""`safe-migrate recover`: the recovery plan of the last unresolved failure; `--execute` carries
it out, `--mark-resolved` records a fix made by hand.

Safety rules (never destroy what the failed run did not create):
- the failure comes from the run ledger in the database (any machine), else from the local
  artifacts of this same database; the leftovers are the objects recorded at failure time;
- under the advisory lock, before any change, everything is read again: the failure still
  unresolved, the version table where the failure left it, each leftover with its recorded
  definition. Anything else: exit 3, nothing changed;
- every statement runs with lock_timeout and upgrade's retries: recovery never queues
  production traffic behind a DROP.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import psycopg
from alembic import command

from runner.db import catalog
from runner.db.connect import connect
from runner.db.lock import AdvisoryLock
from runner.errors import PreflightError
from runner.frameworks.alembic.planning.history import applied
from runner.frameworks.alembic.planning.offline import downgrade_template
from runner.frameworks.alembic.probe import ProbeResult, probe
from runner.frameworks.alembic.project import Project, load_project
from runner.logging import get_logger
from runner.recovery import execute
from runner.recovery import plan as recovery
from runner.recovery.runs import PastRun, RunHistory, still_open
from runner.settings import Settings, add_recover_arguments
from runner.urls import psql_url

#: The common options recover reads (runner.settings.add_common_options).
COMMON_OPTIONS = ("connect_timeout", "lock_timeout", "lock_retries", "advisory_lock_wait",
                  "artifacts_dir", "ledger_table", "no_ledger")
REFUSED_OPTIONS = {"embedded": "a fresh embedded server has nothing to recover; point recover "
                               "at the database the failed run used (--database-url or "
                               "DATABASE_URL)"}
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate recover   # shows the plan
  safe-migrate recover --artifacts-dir migration-artifacts --execute --yes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recover_arguments(parser)


class Recovery:
    """One `recover` invocation against one database."""

    def __init__(self, settings: Settings, project: Project, found: ProbeResult,
                 conn: psycopg.Connection[Any], log: Any) -> None:
        self.settings = settings
        self.project = project
        self.found = found
        self.conn = conn
        self.log = log
        self.history = RunHistory.open(
            conn, version_schema=found.version_schema, version_table=found.version_table,
            ledger_table=settings.ledger_table, use_ledger=settings.ledger,
            artifacts_root=settings.artifacts_root)

    # -- reading ------------------------------------------------------------------------------
    def heads(self) -> list[str]:
        return list(catalog.version_heads(self.conn, self.found.version_schema,
                                          self.found.version_table) or ())

    def unresolved(self) -> PastRun | None:
        heads = self.heads()
        runs = still_open(self.history.unresolved(),
                          lambda rev: applied(self.project.script, heads, rev))
        return runs[0] if runs else None

    def failure_of(self, run: PastRun) -> recovery.Failure:
        """The run's recorded failure; for a run that died mid-step, recorded now: what is
        new since its pre-step record, attributed to the revision's code."""
        return execute.failure_of(
            self.conn, run, lambda: _heads_before_step(run.running.get("down_revision")),
            "non-transactional")

    def plan(self, failure: recovery.Failure, run: PastRun) -> recovery.RecoveryPlan:
        down = failure.down_revision
        template = (downgrade_template(self.project, failure.failed_revision, down)
                    if failure.failed_revision and failure.status == recovery.PARTIAL_APPLY
                    else None)
        rollback = (run.directory / "rollback.sql").resolve() if run.directory else None
        return recovery.build_plan(
            failure, current=self.heads(), config_hint=str(self.settings.config_file),
            downgrade_sql=template, psql_url=psql_url(self.found.url),
            rollback_file=str(rollback) if rollback else "rollback.sql")

    # -- changing -----------------------------------------------------------------------------
    def lock(self) -> AdvisoryLock:
        lock = AdvisoryLock.open(self.found.url, self.found.version_schema,
                                 self.found.version_table, timeout=self.settings.connect_timeout,
                                 run_id=self.settings.run_id, log=self.log,
                                 interrupted=threading.Event())
        try:
            lock.acquire(self.settings.advisory_lock_wait)
        except BaseException:
            lock.close()
            raise
        return lock

    def recheck(self, run: PastRun, failure: recovery.Failure) -> recovery.Failure:
        """Under the lock: still unresolved, the version table where the failure left it, and
        (for a run that died mid-step) the leftovers recorded now."""
        if not self.history.still_unresolved(run):
            raise PreflightError(f"run {run.run_id} was resolved meanwhile: nothing was changed")
        if run.recorded_failure is None:
            failure = self.failure_of(run)
        heads = self.heads()
        if set(heads) != set(failure.heads):
            raise PreflightError(
                f"the database moved since run {run.run_id} failed: its version table is at "
                f"{heads or ['base']}, the failure left {failure.heads or ['base']} (another "
                "run, or a stamp by hand): nothing was changed; check it, then `safe-migrate "
                "recover --mark-resolved` if it is fixed")
        return failure

    def carry_out(self, run: PastRun, failure: recovery.Failure) -> None:
        failure = self.recheck(run, failure)
        plan = self.plan(failure, run)
        drops = execute.unchanged_leftovers(self.conn, failure,
                                            "safe-migrate recover --mark-resolved")
        execute.drop(self.conn, drops, self.settings, self.log)
        stamp = plan.stamp_target or "base"
        if self.heads() != stamp.split() and not (stamp == "base" and not self.heads()):
            revisions = stamp.split()
            command.stamp(self.project.config,
                          revisions[0] if len(revisions) == 1 else revisions, purge=True)
            self.log.info("recovery.stamped", revision=stamp)
        execute.resolve_recovered(self.history, run, failure)
        self.log.info("recovery.done", status=plan.status, stamp_target=plan.stamp_target,
                      run=run.run_id, dropped=len(drops))


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    project = load_project(settings)
    found = probe(project, settings.database_url)
    with connect(found.url, timeout=settings.connect_timeout,
                 application_name="safe-migrate-recover") as conn:
        return execute.recover(Recovery(settings, project, found, conn, log), args, log)


def _heads_before_step(down: Any) -> list[str]:
    if isinstance(down, list):
        return [str(d) for d in down]
    return [str(down)] if down else []
