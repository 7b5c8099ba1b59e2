"""`safe-migrate plan [TARGET]`: what upgrade would check and do, without changing anything.

The starting point is the database's version table (read-only, never created), or `--from REV`
with no database at all (`--from base`, `--from heads` for a pre-commit single-head check).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from alembic.script import Script
from alembic.script.revision import ResolutionError, RevisionError
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from runner import lint
from runner.db.connect import connect, first_line
from runner.errors import LintUnavailableError, PreflightError, SafeMigrateError, UsageError
from runner.frameworks.alembic.planning.history import (
    History,
    applied,
    check_database_revisions,
    check_not_behind,
    check_target,
    load_history,
    pending,
    revision_source,
)
from runner.frameworks.alembic.planning.offline import offline_sql
from runner.frameworks.alembic.planning.transactional import non_transactional_reasons
from runner.frameworks.alembic.probe import ProbeResult, probe
from runner.frameworks.alembic.project import Project, load_project, point_at
from runner.lifecycle import embedded_database
from runner.logging import get_logger, mask_value
from runner.recovery.runs import PastRun, RunHistory, refusal, still_open
from runner.settings import Settings, add_lint_argument, check_lint_arguments
from runner.urls import mask, mask_text

#: The common options plan reads (runner.settings.add_common_options).
COMMON_OPTIONS = ("embedded", "connect_timeout", "ledger_table", "no_ledger")
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate plan
  safe-migrate plan --from base --format json     # no database at all
  safe-migrate plan --embedded                    # from a throwaway server's empty database
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="heads",
                        help="revision to plan the upgrade to (default: heads)")
    parser.add_argument("--from", dest="from_rev", metavar="REV", default=None,
                        help="plan from this revision instead of reading the database "
                             "(no database needed; `base`, `heads` or a revision id)")
    parser.add_argument("--format", dest="output_format", choices=["text", "json"],
                        default="text", help="output format (default text)")
    add_lint_argument(parser)
    from runner.fleet import options as fleet  # --targets, --targets-query, --shard

    fleet.add_arguments(parser, runs=False)


@dataclass
class PlannedRevision:
    script: Script
    reasons: list[str] = field(default_factory=list)
    sql: lint.RevisionSQL | None = None
    sql_error: str | None = None
    findings: list[lint.Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        down = self.script.down_revision
        return {
            "revision": self.script.revision,
            "down_revision": list(down) if isinstance(down, (tuple, list)) else down,
            "path": self.script.path,
            "message": self.script.doc,
            "transactional": not self.reasons,
            "non_transactional_reasons": self.reasons,
            "sql": self.sql.wrapped if self.sql else None,
            "sql_error": self.sql_error,
            "findings": [f.to_dict() for f in self.findings],
        }


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    check_lint_arguments(args)
    from runner.fleet import options as fleet

    if fleet.requested(args):  # every target, grouped by revision: runner/fleet/plan.py
        from runner.fleet import plan as fleet_plan

        return fleet_plan.run(settings, args)
    project = load_project(settings)
    hint = str(settings.config_file)
    doc: dict[str, Any] = {"target": settings.target, "from": args.from_rev, "current": None,
                           "preflight": {"ok": False, "error": None}, "pending": [],
                           "lint": {"mode": args.lint, "rules": args.lint_rules, "findings": 0},
                           "allowed": False}
    try:
        with embedded_database(settings, log, point_at(project)):
            history, current, steps = _preflight(settings, args, project, hint, doc, log)
        planned = _describe(project, history, current, steps, log)
        if args.lint != "off":
            _lint(project, planned, args, doc, log)
    except PreflightError as exc:
        doc["preflight"] = {"ok": False, "error": exc.message}
        log.error("preflight.failed", reason=exc.message)
        _output(doc, args.output_format)
        raise
    findings = [f for p in planned for f in p.findings]
    doc["lint"]["findings"] = len(findings)
    doc["pending"] = [p.to_dict() for p in planned]
    refusal: SafeMigrateError | None = None
    try:
        lint.enforce(findings, args.lint, log)
    except PreflightError as exc:
        refusal = exc
    doc["allowed"] = refusal is None
    _output(doc, args.output_format)
    if refusal is not None:
        raise refusal
    return 0


def _preflight(settings: Settings, args: argparse.Namespace, project: Project, hint: str,
               doc: dict[str, Any], log: Any) -> tuple[History, tuple[str, ...], list[Script]]:
    # Built inside env.py's run, where alembic builds it (see History): the database's
    # probe, or with --from (no database) an offline run, as `alembic upgrade --sql` would.
    history = load_history(project.script, config_hint=hint, config=project.config)
    if args.from_rev is not None:
        try:
            offline_sql(project, "base:base", load=history.load, log=log)
        except SafeMigrateError:
            raise
        except Exception as exc:  # noqa: BLE001 - env.py cannot run offline: built without it
            log.warning("plan.offline_env_failed", error=f"{type(exc).__name__}: "
                        f"{first_line(mask_text(str(exc)))}")
        history.load()
        current = _resolve_from(history, args.from_rev)
    else:
        current = _database_heads(settings, project, history, log)
    check_target(history, settings.target, config_hint=hint)
    check_database_revisions(history, current)
    try:
        steps = pending(history, current, settings.target)
    except (CommandError, RevisionError) as exc:
        raise PreflightError(f"cannot plan {list(current) or 'base'} -> {settings.target}: "
                             f"{first_line(str(exc))}") from None
    if not steps:
        check_not_behind(history, settings.target, current)  # upgrade never downgrades
    doc["current"] = list(current)
    doc["preflight"] = {"ok": True, "error": None}
    log.info("preflight.ok", current=list(current), pending=len(steps), target=settings.target)
    return history, current, steps


def _resolve_from(history: History, rev: str) -> tuple[str, ...]:
    if rev == "base":
        return ()
    try:
        found = history.script.get_revisions(rev)
    except (ResolutionError, CommandError, RevisionError) as exc:
        raise PreflightError(f"--from revision {rev!r} not found: {first_line(str(exc))}") from None
    return tuple(s.revision for s in found if s is not None)


def _database_heads(settings: Settings, project: Project, history: History,
                    log: Any) -> tuple[str, ...]:
    """The database's revisions, read-only, from the version table env.py names (env.py runs
    online as `alembic current` runs it: nothing is created)."""
    open_runs: list[PastRun] = []
    origin: list[str] = []

    def read_ledger(connection: Connection, found: ProbeResult) -> None:
        raw = connection.connection.driver_connection
        if isinstance(raw, psycopg.Connection):  # read-only, inside env.py's transaction
            origin.append(_unresolved(raw, found, settings, open_runs))

    try:
        found = probe(project, settings.database_url, read=read_ledger, load=history.load)
    except UsageError:
        if settings.database_url is None and not project.config.get_main_option(
                "sqlalchemy.url"):
            raise UsageError("plan needs a database: pass --database-url (or set DATABASE_URL), "
                             "use --embedded, or plan without one with --from REV") from None
        raise
    log.info("database", url=mask(found.url),
             version_table=f"{found.version_schema}.{found.version_table}",
             heads=list(found.heads))
    if not origin:  # env.py's driver is not psycopg 3: a connection of our own
        with connect(found.url, timeout=settings.connect_timeout,
                     application_name="safe-migrate-plan") as conn:
            origin.append(_unresolved(conn, found, settings, open_runs))
    blocking = still_open(open_runs, lambda rev: applied(project.script, found.heads, rev))
    if blocking:
        raise refusal(blocking[0], origin[0])  # upgrade would refuse to start
    return found.heads


def _unresolved(conn: psycopg.Connection[Any], found: ProbeResult, settings: Settings,
                into: list[PastRun]) -> str:
    """The run ledger's unresolved failures (upgrade refuses while there is one)."""
    if not settings.ledger:
        return "no ledger"
    history = RunHistory.open(conn, version_schema=found.version_schema,
                              version_table=found.version_table,
                              ledger_table=settings.ledger_table, use_ledger=True,
                              artifacts_root=settings.artifacts_root)
    if history.ledger is not None:
        into.extend(history.unresolved())
    return history.origin


def _describe(project: Project, history: History, current: tuple[str, ...],
              steps: list[Script], log: Any) -> list[PlannedRevision]:
    planned = [PlannedRevision(script) for script in steps]
    revisions = [p.script.revision for p in planned]
    start = current[0] if len(current) == 1 else None
    rendered = lint.revisions_sql(project, history, revisions, start=start, log=log)
    for p in planned:
        p.sql = rendered.sql.get(p.script.revision)
        p.sql_error = None if p.sql else rendered.errors.get(
            p.script.revision, "no offline SQL for this revision")
        if p.sql_error:
            log.warning("plan.offline_unavailable", revision=p.script.revision,
                        path=p.script.path, error=p.sql_error)
        p.reasons = non_transactional_reasons(revision_source(p.script),
                                              p.sql.body if p.sql else None)
    return planned


def _lint(project: Project, planned: list[PlannedRevision], args: argparse.Namespace,
          doc: dict[str, Any], log: Any) -> None:
    mode = args.lint
    items = [(p.script, p.sql.lint_sql) for p in planned if p.sql is not None]
    missing = [(p.script, p.sql_error or "") for p in planned if p.sql is None]
    try:
        rules = lint.rule_set(args.lint_rules, ini_dir=project.ini_path.parent)
        findings = lint.lint_sql(items, rules=rules) + lint.unrenderable(missing, mode)
    except LintUnavailableError as exc:  # as upgrade: only --lint error insists on squawk
        if mode == "error":
            raise
        log.warning("lint.unavailable", error=exc.message)
        doc["lint"]["unavailable"] = exc.message
        return
    by_rev: dict[str, list[lint.Finding]] = {}
    for finding in findings:
        by_rev.setdefault(finding.revision, []).append(finding)
    for p in planned:
        p.findings = by_rev.get(p.script.revision, [])


# -- output ------------------------------------------------------------------------------------

def _output(doc: dict[str, Any], fmt: str) -> None:
    doc = mask_value(doc)  # a migration's SQL may hold a password (CREATE ROLE ... PASSWORD)
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(render_text(doc), end="")


def render_text(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    pre = doc["preflight"]
    current = ", ".join(doc["current"] or []) or "base"
    if not pre["ok"]:
        lines.append(f"preflight: REFUSED: {pre['error']}")
        return "\n".join(lines) + "\n"
    source = f"--from {doc['from']}" if doc["from"] is not None else "database"
    lines.append(f"preflight: ok (current: {current} [{source}]; target: {doc['target']})")
    lines.append(f"pending: {len(doc['pending'])} revision(s)")
    for rev in doc["pending"]:
        kind = ("transactional" if rev["transactional"] else
                "NOT transactional: " + ", ".join(rev["non_transactional_reasons"]))
        lines += ["", f"== {rev['revision']}  {rev['message'] or ''}".rstrip(),
                  f"   file: {rev['path']}", f"   {kind}"]
        if rev["sql"]:
            lines += ["   " + line if line else "" for line in rev["sql"].rstrip().splitlines()]
        else:
            lines.append(f"   (offline SQL unavailable: {rev['sql_error']})")
        for f in rev["findings"]:
            where = f" (sql line {f['line']})" if f["line"] else ""
            lines.append(f"   lint {f['level']}: {f['rule']}{where}: "
                         f"{f['message']}" + (f" Hint: {f['help']}" if f["help"] else ""))
            if f.get("statement"):
                lines.append(f"      statement: {f['statement']}")
    lint_info = doc["lint"]
    if lint_info.get("unavailable"):
        lines += ["", f"lint ({lint_info['mode']}): not run: {lint_info['unavailable']}"]
    elif lint_info["mode"] != "off":
        lines += ["", f"lint ({lint_info['mode']}): {lint_info['findings']} finding(s)"]
    lines.append("upgrade would start" if doc["allowed"] else "upgrade would be REFUSED")
    return "\n".join(lines) + "\n"
