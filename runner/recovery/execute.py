"""`recover` for every framework: which run to recover, the plan shown, "nothing to recover"
with the invalid objects no failed run recorded, the check that the failed run's session is
gone; carrying the plan out: confirm, drop the recorded leftovers that are still as recorded
(with lock_timeout and upgrade's retries), record a fix made by hand. The adapters say only
what differs: which lock, what "applied" means, the stamp.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from runner.db import catalog, objects
from runner.db.failures import LOCK_RACE
from runner.db.lock import AdvisoryLock
from runner.durations import to_postgres_ms
from runner.errors import LockBusyError, PreflightError, UsageError
from runner.frameworks.base import read_source
from runner.recovery import leftovers
from runner.recovery.plan import (
    CLEAN_ROLLBACK,
    PARTIAL_APPLY,
    Failure,
    RecoveryPlan,
    render_markdown,
)
from runner.recovery.runs import PastRun, RunHistory
from runner.settings import Settings


class Recovering(Protocol):
    """What both adapters' recovery jobs offer the shared steps."""

    history: RunHistory
    conn: psycopg.Connection[Any]

    def unresolved(self) -> PastRun | None: ...

    def lock(self) -> AdvisoryLock: ...

    def failure_of(self, run: PastRun) -> Failure: ...

    def plan(self, failure: Failure, run: PastRun) -> RecoveryPlan: ...

    def carry_out(self, run: PastRun, failure: Failure) -> None:
        """Under the lock: read everything again (exit 3 if it moved), then change it."""
        ...


def recover(job: Recovering, args: Any, log: Any) -> int:
    """`recover`: show the plan of the last unresolved failure (or the last clean one);
    `--execute` carries it out under the lock, `--mark-resolved` records a fix by hand."""
    if args.mark_resolved:
        return mark_resolved(job, args.note, log)
    run = job.unresolved() or last_clean_failure(job.history)
    if run is None:
        nothing(job.conn, job.history.origin, log)
        return 0
    failure = job.failure_of(run)
    show(job.plan(failure, run), run, job.history.origin, args.format, log)
    if not args.execute:
        return 0
    confirm(args.yes)
    if failure.status == CLEAN_ROLLBACK:
        print("nothing to carry out: the failed migration was rolled back entirely")
        return 0
    lock = job.lock()
    try:
        job.carry_out(run, failure)
    finally:
        lock.close()
    return 0


def last_clean_failure(history: RunHistory) -> PastRun | None:
    """The last run, when it failed and rolled back cleanly (exit 5): its plan is shown."""
    runs = history.runs()
    latest = runs[0] if runs else None
    return latest if latest is not None and latest.outcome == "migration-failed" else None


def nothing(conn: psycopg.Connection[Any], origin: str, log: Any) -> None:
    """No failure to recover: said, with the invalid indexes / NOT VALID constraints that no
    failed run recorded (listed, never dropped here: whoever made them decides)."""
    others = catalog.invalid_indexes(conn) + catalog.not_valid_constraints(conn)
    print(f"nothing to recover: no unresolved failure recorded ({origin})")
    for obj in others:
        print(f"not touched: {obj['kind']} {obj['schema']}.{obj['name']} on {obj['table']} "
              "(no failed run recorded it)")
    log.info("recovery.nothing", source=origin, unrecorded=len(others))


def show(plan: RecoveryPlan, run: PastRun, origin: str, fmt: str, log: Any) -> None:
    """The plan, as text or JSON on stdout, and its event."""
    print(render_markdown(plan) if fmt == "text" else json.dumps(plan.to_dict(), indent=2))
    log.info("recovery.plan", status=plan.status, stamp_target=plan.stamp_target,
             leftovers=len(plan.leftover_objects), commands=plan.commands,
             run=run.run_id, source=origin)


def failure_of(conn: psycopg.Connection[Any], run: PastRun, heads: Callable[[], list[str]],
               kind: str) -> Failure:
    """The failure the run recorded; for a run that died inside a `kind` step (it could not
    record one), what is new since its pre-step record, attributed to the step's code."""
    if run.recorded_failure is not None:
        return run.recorded_failure
    running = run.running
    path = running.get("path")
    failure = Failure(
        run_id=run.run_id, status=PARTIAL_APPLY,
        failed_revision=running.get("revision"), down_revision=running.get("down_revision"),
        path=path, heads=heads(),
        error=f"the run died during {kind} migration {running.get('revision')}")
    before = run.pre_step
    if before is None:
        failure.leftovers_known = False
        return failure
    refuse_while_still_running(conn, running)
    failure.leftovers, failure.unattributed = leftovers.record(conn, before, read_source(path))
    return failure


def refuse_while_still_running(conn: psycopg.Connection[Any], running: dict[str, Any]) -> None:
    """A killed runner's backend can go on (a CREATE INDEX CONCURRENTLY) until it next talks
    to its client: what it does then must not race with recovery (exit 4, retry later)."""
    pid = running.get("pid")
    if pid is None:
        return
    row = conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND datname = current_database() "
        "AND application_name = 'safe-migrate-migration'", (pid,)).fetchone()
    if row is not None:
        raise LockBusyError(
            f"the failed run's migration session (pid {pid}) is still running on the "
            "server: wait for it to end, or end it with pg_terminate_backend, then retry")


def confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("recover --execute needs --yes when not run interactively")
    if input("Carry out this plan? Type 'yes' to continue: ").strip().lower() != "yes":
        raise UsageError("recovery not confirmed; nothing was changed")


def mark_resolved(job: Recovering, note: str | None, log: Any) -> int:
    """`recover --mark-resolved`: under the lock, the last unresolved failure is resolved."""
    run = job.unresolved()
    if run is None:
        print(f"nothing to mark: no unresolved failure recorded ({job.history.origin})")
        return 0
    lock = job.lock()
    try:
        if not job.history.still_unresolved(run):
            raise PreflightError(f"run {run.run_id} was resolved meanwhile")
        job.history.resolve(run, "marked-resolved", note)
    finally:
        lock.close()
    print(f"run {run.run_id} ({run.outcome}) marked resolved")
    log.info("recovery.marked_resolved", run=run.run_id, note=note)
    return 0


def unchanged_leftovers(conn: psycopg.Connection[Any], failure: Failure,
                        mark_resolved_command: str) -> list[objects.Recorded]:
    """The recorded leftovers still there as recorded; none at all when they are unknown, and
    any that changed since: exit 3, nothing changed."""
    if not failure.leftovers_known:
        raise PreflightError("the leftovers of this failure are unknown, so recover drops "
                             "nothing: inspect the database by hand (the plan's queries), "
                             f"then `{mark_resolved_command}`")
    live = objects.definitions(conn, failure.leftovers)
    changed = [o for o in failure.leftovers
               if o.key in live and o.definition and live[o.key] != o.definition]
    if changed:
        raise PreflightError(
            "changed since the failure, so not the failed run's alone any more: "
            + ", ".join(o.describe() for o in changed) + "; nothing was changed: "
            f"decide by hand, then `{mark_resolved_command}`")
    return [o for o in failure.leftovers if o.key in live or o.kind == "enum_value"]


def drop(conn: psycopg.Connection[Any], leftovers: list[objects.Recorded], settings: Settings,
         log: Any) -> None:
    """Each leftover's DROP, bounded by lock_timeout and retried on a lost lock race: recovery
    never queues production traffic behind a DROP."""
    conn.execute(f"SET lock_timeout = '{to_postgres_ms(settings.lock_timeout)}'")
    for obj in leftovers:
        statement = obj.drop_sql()
        if statement.lstrip().startswith("--"):
            continue
        _with_retries(conn, statement, settings.lock_retries)
        log.info("recovery.statement", sql=statement)


def resolve_recovered(history: RunHistory, run: PastRun, failure: Failure) -> None:
    skipped = [o.describe() for o in failure.unattributed]
    note = f"left alone (not the failed run's): {', '.join(skipped)}" if skipped else None
    history.resolve(run, "recovered", note)


def _with_retries(conn: psycopg.Connection[Any], statement: str, retries: int) -> None:
    from tenacity import Retrying, retry_if_exception, stop_after_attempt
    from tenacity import wait_exponential_jitter as jitter

    for attempt in Retrying(
            retry=retry_if_exception(lambda exc: getattr(exc, "sqlstate", None) in LOCK_RACE),
            stop=stop_after_attempt(retries + 1),
            wait=jitter(multiplier=0.5, max=10.0, jitter=0.5), reraise=True):
        with attempt:
            conn.execute(statement.encode())
