"""`safe-migrate recover`: the recovery plan from the live database and the last run's artifacts;
`--execute` carries it out under the same advisory lock as upgrade, after showing it."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
from alembic import command

from runner.artifacts import find_run_dirs, load_run
from runner.db import catalog
from runner.db.connect import connect
from runner.db.lock import AdvisoryLock
from runner.db.probe import ProbeResult, probe
from runner.errors import SafeMigrateError, UsageError
from runner.logging import get_logger
from runner.planning.offline import downgrade_template
from runner.project import Project, load_project
from runner.recovery import plan as recovery
from runner.recovery.leftovers import find_leftovers
from runner.schema import snapshot
from runner.settings import Settings

#: The common options recover reads (runner.settings.add_common_options).
COMMON_OPTIONS = ("connect_timeout", "advisory_lock_wait", "artifacts_dir", "pg_dump")
REFUSED_OPTIONS = {"embedded": "a fresh embedded server has nothing to recover; point recover "
                               "at the database the failed run used (--database-url or "
                               "DATABASE_URL)"}
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate recover   # shows the plan
  safe-migrate recover --artifacts-dir migration-artifacts --execute --yes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--execute", action="store_true",
                        help="carry the plan out (after showing it)")
    parser.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (non-interactive use)")
    parser.add_argument("--format", choices=["text", "json"], default="text")


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    project = load_project(settings)
    found = probe(project, settings.database_url)
    conn = connect(found.url, timeout=settings.connect_timeout,
                   application_name="safe-migrate-recover")
    with conn:
        plan = build(settings, project, found, conn)
        if plan.failed_revision is None and not plan.leftover_objects:
            print("nothing to recover: no failed run recorded and no leftovers in the database")
            log.info("recovery.nothing")
            return 0
        print(recovery.render_markdown(plan) if args.format == "text"
              else json.dumps(plan.to_dict(), indent=2))
        log.info("recovery.plan", status=plan.status, stamp_target=plan.stamp_target,
                 leftovers=len(plan.leftover_objects), commands=plan.commands)
        if not args.execute:
            return 0
        _confirm(args.yes)
        execute(settings, project, found, conn, plan, log)
    return 0


def build(settings: Settings, project: Project, found: ProbeResult,
          conn: psycopg.Connection[Any]) -> recovery.RecoveryPlan:
    heads = list(catalog.version_heads(conn, found.version_schema, found.version_table) or ())
    runs = find_run_dirs(settings.artifacts_root)
    last = load_run(runs[-1]) if runs else {}
    failed = _failed_migration(last, project)
    if failed and _applied(project, heads, failed["revision"]):
        # Killed between its commit and the journal's next write: the database says applied.
        failed = None
    baseline = _baseline(runs[-1], failed) if runs and failed else None
    live = None
    if baseline is not None:
        pg_dump = snapshot.find_pg_dump(settings.pg_dump)
        snapshot.check_pg_dump(pg_dump, catalog.server_version_num(conn))
        live = snapshot.take_snapshot(pg_dump, found.url,
                                      [(found.version_schema, found.version_table)]).text
    leftovers = find_leftovers(conn, baseline, live)
    status = recovery.PARTIAL_APPLY if leftovers else recovery.CLEAN_ROLLBACK
    down = failed.get("down_revision") if failed else None
    downgrade_sql = downgrade_template(project, failed["revision"], down) if failed else None
    return recovery.build_plan(
        status=status, current=heads,
        failed_revision=failed.get("revision") if failed else None,
        failed_down_revision=down if isinstance(down, str) else None,
        failed_path=failed.get("path") if failed else None, leftovers=leftovers,
        downgrade_sql=downgrade_sql, config_hint=str(settings.config_file),
        error=last.get("error"))


def _failed_migration(run: dict[str, Any], project: Project) -> dict[str, Any] | None:
    """The migration the last run was in when it failed or died (a killed run: the step its
    journal names, which run.json itself may not list yet)."""
    running = run.get("running_revision") if run.get("outcome") == "running" else None
    for migration in reversed(run.get("migrations", [])):
        if migration.get("outcome") != "applied" and running in (None, migration["revision"]):
            return dict(migration)
    script = project.script.get_revision(running) if running else None
    if script is None:
        return None
    down = script.down_revision
    return {"revision": script.revision, "path": script.path,
            "down_revision": list(down) if isinstance(down, (tuple, list)) else down}


def _applied(project: Project, heads: list[str], revision: str) -> bool:
    """Whether the database at `heads` has `revision` (it or a descendant is applied)."""
    if not heads:
        return False
    try:
        return any(script.revision == revision
                   for script in project.script.iterate_revisions(tuple(heads), "base"))
    except Exception:  # noqa: BLE001 - an unknown head: recover cannot vouch for anything
        return False


def _baseline(run_dir: Path, failed: dict[str, Any] | None) -> str | None:
    """The schema right before the failed migration, as the run recorded it.

    Only a non-transactional migration has one, and only it can leave anything behind; the
    run's schema-before.sql is no baseline: migrations applied earlier in the run differ
    from it legitimately.
    """
    path = run_dir / f"schema-pre-{failed['revision']}.sql" if failed else None
    return path.read_text() if path is not None and path.is_file() else None


def _confirm(yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("recover --execute needs --yes when not run interactively")
    answer = input("Carry out this plan? Type 'yes' to continue: ")
    if answer.strip().lower() != "yes":
        raise UsageError("recovery not confirmed; nothing was changed")


def execute(settings: Settings, project: Project, found: ProbeResult,
            conn: psycopg.Connection[Any], plan: recovery.RecoveryPlan, log: Any) -> None:
    lock = AdvisoryLock.open(found.url, found.version_schema, found.version_table,
                             timeout=settings.connect_timeout, run_id=settings.run_id, log=log,
                             interrupted=threading.Event())
    try:
        lock.acquire(settings.advisory_lock_wait)
        for statement in plan.rollback_sql:
            if statement.lstrip().startswith("--"):
                continue
            # Autocommit, one statement at a time: DROP INDEX CONCURRENTLY needs it.
            conn.execute(statement.encode())
            log.info("recovery.statement", sql=statement)
        heads = list(catalog.version_heads(conn, found.version_schema, found.version_table) or ())
        if plan.stamp_target and heads != [plan.stamp_target]:
            command.stamp(project.config, plan.stamp_target, purge=True)
            log.info("recovery.stamped", revision=plan.stamp_target)
        remaining = catalog.invalid_indexes(conn)
        if remaining:
            raise SafeMigrateError(f"recovery left invalid indexes behind: {remaining}")
        log.info("recovery.done", status=plan.status, stamp_target=plan.stamp_target)
    finally:
        lock.close()
