"""`safe-migrate status`: read-only view of the database and the last recorded run."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import Connection

from runner.db import catalog
from runner.db.connect import connect
from runner.db.lock import version_table_key
from runner.frameworks.alembic.planning.history import applied, load_history, unknown_revisions
from runner.frameworks.alembic.planning.history import pending as _pending
from runner.frameworks.alembic.probe import ProbeResult, probe
from runner.frameworks.alembic.project import Project, load_project, point_at
from runner.lifecycle import embedded_database
from runner.logging import get_logger
from runner.recovery.runs import PastRun, RunHistory, still_open
from runner.settings import Settings
from runner.urls import mask

#: The common options status reads (runner.settings.add_common_options).
COMMON_OPTIONS = ("embedded", "connect_timeout", "artifacts_dir", "ledger_table", "no_ledger")
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate status
  safe-migrate status -c alembic.ini --database-url "$URL" --format json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["text", "json"], default="text")
    from runner.fleet import options as fleet  # --targets, --targets-query, --shard

    fleet.add_arguments(parser, runs=False)


@dataclass
class Reading:
    """What status reads in the database, beside what alembic read for the probe."""

    heads: tuple[str, ...] | None  # None: no version table
    lock_holders: list[dict[str, Any]]
    invalid_objects: list[dict[str, str]]
    runs: list[PastRun]  # newest first
    unresolved: list[PastRun]
    source: str  # where the runs come from: the ledger, or the artifacts


def read(conn: psycopg.Connection[Any], found: ProbeResult, settings: Settings) -> Reading:
    schema, table = found.version_schema, found.version_table
    key = version_table_key(conn, schema, table)
    history = RunHistory.open(conn, version_schema=schema, version_table=table,
                              ledger_table=settings.ledger_table, use_ledger=settings.ledger,
                              artifacts_root=settings.artifacts_root)
    return Reading(heads=catalog.version_heads(conn, schema, table),
                   lock_holders=[h.to_dict() for h in catalog.advisory_lock_holders(conn, key)],
                   invalid_objects=catalog.invalid_indexes(conn)
                   + catalog.not_valid_constraints(conn),
                   runs=history.runs(), unresolved=history.unresolved(),
                   source=history.origin)


def collect(settings: Settings) -> dict[str, Any]:
    project = load_project(settings)
    # --embedded: a throwaway server
    with embedded_database(settings, get_logger(), point_at(project)):
        return _collect(settings, project)


def _collect(settings: Settings, project: Project) -> dict[str, Any]:
    history = load_history(project.script, config_hint=str(settings.config_file),
                           config=project.config)
    readings: list[Reading] = []

    def on_env_py_connection(connection: Connection, found: ProbeResult) -> None:
        raw = connection.connection.driver_connection
        if isinstance(raw, psycopg.Connection):  # read-only, inside env.py's transaction
            readings.append(read(raw, found, settings))

    found = probe(project, settings.database_url, read=on_env_py_connection,
                  load=history.load)  # the graph: built inside env.py's run
    if not readings:  # env.py's driver is not psycopg 3: a connection of our own
        with connect(found.url, timeout=settings.connect_timeout,
                     application_name="safe-migrate-status") as conn:
            readings.append(read(conn, found, settings))
    reading = readings[0]
    heads, holders, leftovers = reading.heads, reading.lock_holders, reading.invalid_objects
    current = list(heads or ())
    unknown = unknown_revisions(history, tuple(current))
    pending = [] if unknown else [s.revision for s in _pending(history, tuple(current), "heads")]
    last = reading.runs[0] if reading.runs else None
    unresolved = still_open(reading.unresolved,
                            lambda rev: applied(history.script, current, rev))
    return {
        "database_url": mask(found.url),
        "version_table": f"{found.version_schema}.{found.version_table}",
        "version_table_exists": heads is not None,
        "current": current,
        "heads": list(history.heads),
        "unknown_revisions": unknown,
        "pending": pending,
        "pending_count": len(pending),
        "lock_holders": holders,
        "invalid_objects": leftovers,
        "runs_source": reading.source,
        "last_run": None if last is None else _last_run(last, holders, pending),
        "unresolved": [run.summary() for run in unresolved],
    }


def _last_run(last: PastRun, holders: list[dict[str, Any]],
              pending: list[str]) -> dict[str, Any]:
    summary = last.summary()
    # A run still "running" while nobody holds the lock died (killed, pod evicted).
    summary["died"] = died = last.outcome == "running" and not holders
    if died and pending and summary["running_revision"] not in pending:
        # Each step commits with its version row: it died in the first one not recorded.
        summary["running_revision"] = pending[0]
    return summary


def run(settings: Settings, args: argparse.Namespace) -> int:
    from runner.fleet import options as fleet

    if fleet.requested(args):  # the fleet at a glance: runner/fleet/status.py
        from runner.fleet import status as fleet_status

        return fleet_status.run(settings, args)
    report = collect(settings)
    get_logger().info("status", **{k: v for k, v in report.items() if k != "pending"})
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    lines = [f"database:       {report['database_url']} ({report['version_table']})",
             f"current:        {', '.join(report['current']) or 'base (no revision)'}",
             f"heads:          {', '.join(report['heads'])}",
             f"pending:        {report['pending_count']}"]
    if report["unknown_revisions"]:
        lines.append(f"UNKNOWN:        {', '.join(report['unknown_revisions'])} "
                     "(not in the migration scripts)")
    holders = report["lock_holders"]
    lines.append("advisory lock:  " + (", ".join(
        f"held by pid {h['pid']} ({h['application_name']}) since {h['since']}" for h in holders)
        if holders else "free"))
    for obj in report["invalid_objects"]:
        lines.append(f"LEFTOVER:       {obj['kind']} {obj['schema']}.{obj['name']}")
    last = report["last_run"]
    lines.append("last run:       " + ("none recorded" if last is None else
                 f"{last['run_id']}: {last['outcome']}"
                 + (" (died)" if last["died"] else f" (exit {last['exit_code']})")
                 + f" [{report['runs_source']}]"))
    for run in report["unresolved"]:
        lines.append(f"UNRESOLVED:     run {run['run_id']}: {run['outcome']} at "
                     f"{run['failed_revision'] or '?'}: run `safe-migrate recover`")
    return "\n".join(lines)
