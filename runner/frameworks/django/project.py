"""Load a Django project and its migration graph, with Django's failure modes as preflight
refusals (exit 3) that name the fix command."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import PreflightError, UsageError
from runner.frameworks.base import Step
from runner.urls import pg_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

VERSION_TABLE = "django_migrations"
#: RunSQL that cannot run in a transaction block.
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.I)

Key = tuple[str, str]


def setup(settings_module: str | None, alias: str, url: URL | None) -> Any:
    """django.setup() with the project's settings; --database-url overrides the alias's
    connection (before anything connects). Returns the alias's connection."""
    try:
        import django
    except ImportError:
        raise UsageError("--framework django needs Django: pip install "
                         "'safe-migrate[django]'") from None
    module = settings_module or os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise UsageError("--framework django needs the settings module: pass --settings "
                         "MODULE or set DJANGO_SETTINGS_MODULE")
    os.environ["DJANGO_SETTINGS_MODULE"] = module
    if os.getcwd() not in sys.path:  # as manage.py does: the project's folder is importable
        sys.path.insert(0, os.getcwd())
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        databases = settings.DATABASES
    except ImportError as exc:
        raise UsageError(f"--settings {module}: cannot import it ({exc})") from None
    except ImproperlyConfigured as exc:
        raise UsageError(f"Django settings {module}: {exc}") from None
    if alias not in databases:
        raise UsageError(f"--database {alias}: not in DATABASES of {module} "
                         f"(has {', '.join(sorted(databases)) or 'none'})")
    entry = databases[alias]
    if url is not None:
        entry.update({"ENGINE": "django.db.backends.postgresql", "NAME": url.database or "",
                      "USER": url.username or "", "PASSWORD": url.password or "",
                      "HOST": url.host or "", "PORT": str(url.port or "")})
    if "postgresql" not in str(entry.get("ENGINE", "")):
        raise UsageError(f"--database {alias}: ENGINE {entry.get('ENGINE')} is not PostgreSQL")
    try:
        django.setup()
    except Exception as exc:  # noqa: BLE001 - the project's own code (apps, models) failed
        raise UsageError(f"django.setup() with {module} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    from django.db import connections

    return connections[alias]


def sqlalchemy_url(connection: Any) -> URL:
    """The alias's server as a URL, for the runner's own psycopg sessions."""
    params = connection.get_connection_params()
    return pg_url(username=params.get("user") or None,
                      password=params.get("password") or None, host=params.get("host") or None,
                      port=int(params["port"]) if params.get("port") else None,
                      database=params.get("dbname") or None)


def module_file(migration: Any) -> str:
    module = sys.modules.get(type(migration).__module__)
    return str(getattr(module, "__file__", None) or type(migration).__module__)


def load_graph() -> Any:
    """The migration graph from the files alone: NodeNotFoundError and conflicts refused."""
    from django.db.migrations.exceptions import NodeNotFoundError
    from django.db.migrations.loader import MigrationLoader

    try:
        loader = MigrationLoader(None, ignore_no_migrations=True)
    except NodeNotFoundError as exc:
        raise node_not_found(exc) from None
    conflicts = loader.detect_conflicts()
    if conflicts:
        names = "; ".join(f"{app}: {', '.join(sorted(leaves))}"
                          for app, leaves in sorted(conflicts.items()))
        raise PreflightError(
            f"conflicting migrations (several leaf nodes) in {names}; merge them first: "
            f"python manage.py makemigrations --merge {' '.join(sorted(conflicts))}",
            conflicts={app: sorted(v) for app, v in conflicts.items()})
    return loader


def anything_pending(connection: Any, loader: Any) -> bool:
    """Before the lock, a guess that only starts work early (the before-snapshot): whether
    a migration of the graph is not recorded in django_migrations. True when it cannot tell;
    the run plans again under the lock."""
    from django.db.migrations.recorder import MigrationRecorder

    try:
        applied = MigrationRecorder(connection).applied_migrations()
    except Exception:  # noqa: BLE001 - unreachable, no privilege...: the run says it, later
        return True
    return any(node not in applied for node in loader.graph.nodes)


MODEL_CHANGE_MODES = ("error", "warn", "off")


def model_changes(loader: Any) -> dict[str, list[str]]:
    """`makemigrations --check`: the models' changes no migration has yet, per app (the
    autodetector between the migrations' final state and the models; ~10 ms)."""
    from django.apps import apps
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.state import ProjectState

    detector = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps))
    changes = detector.changes(graph=loader.graph)
    return {app: [m.name for m in found] for app, found in sorted(changes.items())}


def check_model_changes(loader: Any, mode: str, log: Any) -> dict[str, list[str]]:
    """Warn (or, with `error`, refuse: exit 3) when models changed without a migration."""
    if mode == "off":
        return {}
    changes = model_changes(loader)
    if not changes:
        return changes
    apps = " ".join(changes)
    log.warning("preflight.model_changes", apps=changes,
                fix=f"python manage.py makemigrations {apps}")
    if mode == "error":
        raise PreflightError(
            f"models changed without a migration in {', '.join(changes)} (makemigrations "
            f"--check); create them first: python manage.py makemigrations {apps}",
            model_changes=changes)
    return changes


def node_not_found(exc: Any) -> PreflightError:
    origin = getattr(exc, "origin", None)
    node = getattr(exc, "node", None)
    missing = ".".join(node) if isinstance(node, tuple) else str(node)
    where = ""
    if origin is not None:
        where = (f" {getattr(origin, 'app_label', '?')}.{getattr(origin, 'name', '?')} "
                 f"({module_file(origin)})")
    return PreflightError(
        f"migration{where} depends on {missing}, which does not exist (a deleted or renamed "
        f"migration file?): restore {missing}, or fix the dependency in that file",
        missing=missing)


def check_history(loader: Any, connection: Any) -> None:
    from django.db.migrations.exceptions import InconsistentMigrationHistory

    try:
        loader.check_consistent_history(connection)
    except InconsistentMigrationHistory as exc:
        raise PreflightError(
            f"{exc} If the dependency's changes are in the database, record it with `python "
            "manage.py migrate APP MIGRATION --fake` (APP MIGRATION: the dependency); otherwise "
            "unapply the migration applied too early", kind="inconsistent-history") from None


def targets(loader: Any, target: str) -> list[Key]:
    """TARGET: `heads` (every app's leaf), `APP`, or `APP:MIGRATION` (a prefix, as migrate)."""
    from django.db.migrations.exceptions import AmbiguityError

    graph = loader.graph
    if target in ("heads", "head", ""):
        return list(graph.leaf_nodes())
    app, _, name = target.partition(":")
    if app not in loader.migrated_apps:
        raise PreflightError(f"target {target}: app {app!r} has no migrations",
                             target=target)
    if not name:
        return [key for key in graph.leaf_nodes() if key[0] == app]
    if name == "zero":
        raise PreflightError(f"target {target} would unapply {app}'s migrations: upgrade "
                             "never moves backwards", target=target)
    try:
        migration = loader.get_migration_by_prefix(app, name)
    except AmbiguityError:
        raise PreflightError(f"target {target}: more than one migration of {app} starts "
                             f"with {name!r}", target=target) from None
    except KeyError:
        raise PreflightError(f"target {target}: {app} has no migration {name!r}",
                             target=target) from None
    return [(app, migration.name)]


def plan(executor: Any, keys: list[Key], target: str) -> list[Any]:
    """The migrations to apply, in order; a target behind the database is refused."""
    migration_plan = executor.migration_plan(keys)
    backwards = [f"{m.app_label}.{m.name}" for m, back in migration_plan if back]
    if backwards:
        raise PreflightError(
            f"target {target} is behind the database: it would unapply "
            f"{', '.join(backwards)}; upgrade never moves backwards", target=target)
    return [m for m, _ in migration_plan]


def non_atomic_reasons(migration: Any) -> list[str]:
    """Why a migration can leave part of itself committed: Django runs it without a
    transaction (atomic = False), each statement committing on its own."""
    if migration.atomic:
        return []
    reasons = ["atomic = False"]
    for op in migration.operations:
        name = type(op).__name__
        if name.endswith("Concurrently"):
            reasons.append(name)
        elif name == "RunSQL" and _CONCURRENTLY.search(str(op.sql)):
            reasons.append("RunSQL ... CONCURRENTLY")
        elif name in ("RunSQL", "RunPython"):
            reasons.append(f"{name} outside a transaction")
    return reasons


def step_of(migration: Any, loader: Any) -> Step:
    key = (migration.app_label, migration.name)
    parents = [p for p in loader.graph.node_map[key].parents if p[0] == key[0]]
    previous = parents[0][1] if parents else "zero"
    return Step(id=f"{key[0]}.{key[1]}", title=key[1], previous=f"{key[0]} {previous}",
                path=module_file(migration),
                non_transactional_reasons=non_atomic_reasons(migration))


@dataclass
class Applied:
    """What django_migrations says, per app: the last applied migration (for the ledger)."""

    keys: set[Key]

    def heads(self) -> list[str]:
        last: dict[str, str] = {}
        for app, name in sorted(self.keys):
            last[app] = name
        return [f"{app}.{name}" for app, name in sorted(last.items())]


def end_broken_atomic(conn: Any) -> None:
    """A failure in the deferred SQL (foreign keys, indexes) raises from the schema editor's
    __exit__ before it closes its atomic block: the transaction stays open and aborted. Roll
    it back and give the connection back its autocommit state (upgrade and verify alike)."""
    if not conn.in_atomic_block:
        return
    with contextlib.suppress(Exception):
        conn.connection.rollback()
    conn.in_atomic_block = False
    conn.needs_rollback = False
    conn.savepoint_ids = []
    conn.commit_on_exit = True
    with contextlib.suppress(Exception):
        conn.set_autocommit(True)
