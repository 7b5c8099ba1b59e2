"""`plan` and `status` with --framework django: read-only, from Django's loader and the
database (django_migrations, the advisory lock, the catalog, the run ledger)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import psycopg

from runner.db import catalog
from runner.db.connect import connect
from runner.db.lock import lock_key
from runner.errors import LintUnavailableError, PreflightError, SafeMigrateError
from runner.frameworks.django import project as dj
from runner.logging import get_logger, mask_value
from runner.recovery.runs import RunHistory, refusal, still_open
from runner.settings import Settings
from runner.urls import mask

if TYPE_CHECKING:  # runner.lint loads alembic (and SQLAlchemy): only when linting
    from runner.lint import Finding


@dataclass
class _Script:
    """What the linter reads of a revision script: its id and its file."""

    revision: str
    path: str


def _history(conn: psycopg.Connection[Any], schema: str, settings: Settings) -> RunHistory:
    return RunHistory.open(conn, version_schema=schema, version_table=dj.VERSION_TABLE,
                           ledger_table=settings.ledger_table, use_ledger=settings.ledger,
                           artifacts_root=settings.artifacts_root)


def _schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0] if row and row[0] else "public")


# -- plan -----------------------------------------------------------------------------------

def plan(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    connection = dj.setup(settings.django_settings, settings.database_alias,
                          settings.database_url)
    doc: dict[str, Any] = {"framework": "django", "target": settings.target, "current": None,
                           "preflight": {"ok": False, "error": None}, "pending": [],
                           "lint": {"mode": args.lint, "rules": args.lint_rules, "findings": 0},
                           "allowed": False}
    try:
        loader = dj.load_graph()
        try:
            doc["model_changes"] = dj.check_model_changes(loader, args.model_changes, log)
        except PreflightError as exc:
            doc["model_changes"] = exc.data.get("model_changes")
            raise
        with connect(dj.sqlalchemy_url(connection), timeout=settings.connect_timeout,
                     application_name="safe-migrate-plan") as conn:
            from django.db.migrations.executor import MigrationExecutor

            executor = MigrationExecutor(connection)
            dj.check_history(executor.loader, connection)
            applied = set(executor.loader.applied_migrations)
            history = _history(conn, _schema(conn), settings)
            open_runs = still_open(history.unresolved(),
                                   lambda sid: tuple(sid.split(".", 1)) in applied)
            if open_runs:
                raise refusal(open_runs[0], history.origin)
            migrations = dj.plan(executor, dj.targets(executor.loader, settings.target),
                                 settings.target)
        del loader
        doc["current"] = dj.Applied(applied).heads()
        doc["preflight"] = {"ok": True, "error": None}
        log.info("preflight.ok", current=doc["current"], pending=len(migrations),
                 target=settings.target)
        pending = describe_all(executor.loader, migrations)
        if args.lint != "off":
            _lint(pending, args, doc, log)
    except PreflightError as exc:
        doc["preflight"] = {"ok": False, "error": exc.message}
        log.error("preflight.failed", reason=exc.message)
        _output(doc, args.output_format)
        raise
    finally:
        connection.close()
    doc["pending"] = pending
    doc["lint"]["findings"] = sum(len(p["findings"]) for p in pending)
    from runner import lint

    refused: SafeMigrateError | None = None
    try:
        lint.enforce([f for p in pending for f in p.pop("_findings")], args.lint, log)
    except PreflightError as exc:
        refused = exc
    doc["allowed"] = refused is None
    _output(doc, args.output_format)
    if refused is not None:
        raise refused
    return 0


def describe_all(loader: Any, migrations: list[Any]) -> list[dict[str, Any]]:
    """Each pending migration with its SQL, as `sqlmigrate` prints it. In one pass, as
    Django's collect_sql does over a plan: the state carried from one migration to the next
    (asked per migration, it renders the project state from scratch each time: quadratic)."""
    described = []
    state = None
    for migration in migrations:
        step = dj.step_of(migration, loader)
        sql: str | None = None
        error = None
        try:
            with loader.connection.schema_editor(collect_sql=True,
                                                 atomic=migration.atomic) as editor:
                if state is None:
                    state = loader.project_state((migration.app_label, migration.name),
                                                 at_end=False)
                state = migration.apply(state, editor, collect_sql=True)
            sql = "\n".join(editor.collected_sql)
        except Exception as exc:  # noqa: BLE001 - shown, as sqlmigrate would fail on it
            error, state = f"{type(exc).__name__}: {exc}", None  # the next: from the graph
        described.append({
            "revision": step.id, "down_revision": step.previous, "path": step.path,
            "message": step.title, "transactional": step.transactional,
            "non_transactional_reasons": step.non_transactional_reasons, "sql": sql,
            "sql_error": error, "findings": [], "_findings": []})
    return described


def lint_findings(pending: list[dict[str, Any]], mode: str, rules: str,
                  log: Any) -> tuple[list[Finding], str | None]:
    """squawk over each pending migration's SQL (as sqlmigrate prints it), for plan and
    upgrade. Returns (findings, why squawk was unavailable); unavailable raises with error."""
    from runner import lint

    items = [(cast(Any, _Script(p["revision"], p["path"])), p["sql"]) for p in pending
             if p["sql"]]
    try:
        return lint.lint_sql(items, rules=lint.rule_set(rules)), None
    except LintUnavailableError as exc:
        if mode == "error":
            raise
        log.warning("lint.unavailable", error=exc.message)
        return [], exc.message


def _lint(pending: list[dict[str, Any]], args: argparse.Namespace, doc: dict[str, Any],
          log: Any) -> None:
    findings, unavailable = lint_findings(pending, args.lint, args.lint_rules, log)
    if unavailable is not None:
        doc["lint"]["unavailable"] = unavailable
        return
    for p in pending:
        mine = [f for f in findings if f.revision == p["revision"]]
        p["_findings"] = mine
        p["findings"] = [f.to_dict() for f in mine]


def _output(doc: dict[str, Any], fmt: str) -> None:
    doc = mask_value({k: v for k, v in doc.items()})
    for p in doc.get("pending") or []:
        p.pop("_findings", None)
    if fmt == "json":
        print(json.dumps(doc, indent=2, default=str))
        return
    pre = doc["preflight"]
    if not pre["ok"]:
        print(f"preflight: REFUSED: {pre['error']}")
        return
    changes = doc.get("model_changes") or {}
    lines = [f"preflight: ok (target: {doc['target']})"]
    lines += [f"WARNING: models of {app} changed without a migration: python manage.py "
              f"makemigrations {app}" for app in changes]
    lines.append(f"pending: {len(doc['pending'])} migration(s)")
    for p in doc["pending"]:
        kind = ("atomic (one transaction)" if p["transactional"] else
                "NOT atomic: " + ", ".join(p["non_transactional_reasons"]))
        lines += ["", f"== {p['revision']}", f"   file: {p['path']}", f"   {kind}"]
        text = p["sql"] if p["sql"] is not None else f"(no SQL: {p['sql_error']})"
        lines += ["   " + line if line else "" for line in text.rstrip().splitlines()]
        for f in p["findings"]:
            lines.append(f"   lint {f['level']}: {f['rule']}: {f['message']}")
    if doc["lint"]["mode"] != "off":
        lines += ["", f"lint ({doc['lint']['mode']}): {doc['lint']['findings']} finding(s)"]
    lines.append("upgrade would start" if doc["allowed"] else "upgrade would be REFUSED")
    print("\n".join(lines))


# -- status ---------------------------------------------------------------------------------

def status(settings: Settings, args: argparse.Namespace) -> int:
    connection = dj.setup(settings.django_settings, settings.database_alias,
                          settings.database_url)
    loader = dj.load_graph()
    url = dj.sqlalchemy_url(connection)
    with connect(url, timeout=settings.connect_timeout,
                 application_name="safe-migrate-status") as conn:
        schema = _schema(conn)
        table = conn.execute("SELECT to_regclass(%s)",
                             (f'"{schema}".{dj.VERSION_TABLE}',)).fetchone()
        applied: set[tuple[str, str]] = set()
        if table and table[0] is not None:
            applied = {(str(a), str(n)) for a, n in conn.execute(
                f'SELECT app, name FROM "{schema}".{dj.VERSION_TABLE}').fetchall()}
        key = lock_key(catalog.current_database(conn), schema, dj.VERSION_TABLE)
        holders = [h.to_dict() for h in catalog.advisory_lock_holders(conn, key)]
        invalid = catalog.invalid_indexes(conn) + catalog.not_valid_constraints(conn)
        history = _history(conn, schema, settings)
        runs = history.runs()
        unresolved = still_open(history.unresolved(),
                                lambda sid: tuple(sid.split(".", 1)) in applied)
    apps: dict[str, list[dict[str, Any]]] = {}
    for key_ in loader.graph.leaf_nodes():  # showmigrations' order: each app's plan
        for app, name in loader.graph.forwards_plan(key_):
            if app == key_[0]:
                apps.setdefault(app, []).append({"name": name, "applied": (app, name) in applied})
    pending = [f"{app}.{m['name']}" for app, ms in sorted(apps.items()) for m in ms
               if not m["applied"]]
    last = runs[0] if runs else None
    report: dict[str, Any] = {
        "framework": "django", "database_url": mask(url),
        "version_table": f"{schema}.{dj.VERSION_TABLE}",
        "version_table_exists": bool(table and table[0] is not None),
        "current": dj.Applied(applied).heads(), "apps": dict(sorted(apps.items())),
        "pending": pending, "pending_count": len(pending), "lock_holders": holders,
        "invalid_objects": invalid, "runs_source": history.origin,
        "last_run": None if last is None else {**last.summary(),
                                               "died": last.outcome == "running"
                                               and not holders},
        "unresolved": [r.summary() for r in unresolved],
    }
    get_logger().info("status", **{k: v for k, v in report.items() if k not in ("pending",
                                                                                  "apps")})
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
        return 0
    lines = [f"database:       {report['database_url']} ({report['version_table']})"]
    for app, ms in sorted(apps.items()):  # as `manage.py showmigrations`
        lines.append(app)
        lines += [f" [{'X' if m['applied'] else ' '}] {m['name']}" for m in ms]
    lines.append(f"pending:        {report['pending_count']}")
    lines.append("advisory lock:  " + (", ".join(
        f"held by pid {h['pid']} ({h['application_name']}) since {h['since']}"
        for h in holders) if holders else "free"))
    for obj in invalid:
        lines.append(f"LEFTOVER:       {obj['kind']} {obj['schema']}.{obj['name']}")
    lines.append("last run:       " + ("none recorded" if last is None else
                 f"{last.run_id}: {last.outcome} [{history.origin}]"))
    for r in [run.summary() for run in unresolved]:
        lines.append(f"UNRESOLVED:     run {r['run_id']}: {r['outcome']}: run `safe-migrate "
                     "recover --framework django`")
    print("\n".join(lines))
    return 0
