"""Learn what env.py connects to (URL, version table) without changing anything.

Runs env.py as `alembic current` does: dont_mutate=True, and a fn that yields no step, so
the version table is never created. The configure() wrapper only records what env.py says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Connection

from runner.db.connect import env_py_failure
from runner.errors import UsageError
from runner.frameworks.alembic.project import Project, fresh_attributes
from runner.logging import quiet_alembic
from runner.urls import mask, parse_url, same_database


@dataclass
class ProbeResult:
    url: URL
    version_table: str
    version_schema: str
    heads: tuple[str, ...] = ()  # what the version table holds, read by alembic itself


def where_env_py_connects(connection: Connection, opts: dict[str, Any]) -> ProbeResult:
    """The database and version table that env.py's configure(connection=..., **opts) names."""
    schema = opts.get("version_table_schema") or connection.exec_driver_sql(
        "SELECT current_schema()").scalar()
    return ProbeResult(url=parse_url(connection.engine.url.render_as_string(hide_password=False)),
                       version_table=opts.get("version_table") or "alembic_version",
                       version_schema=str(schema or "public"))


def check_database(url: URL, asked: URL | None) -> None:
    """UsageError (exit 2) when env.py connects to another database than --database-url /
    DATABASE_URL names: an env.py that ignores sqlalchemy.url must never get a command's
    work done on a database nobody asked for."""
    if asked is not None and not same_database(url, asked):
        raise UsageError(f"env.py connects to {mask(url)}, not to the --database-url / "
                         f"DATABASE_URL given ({mask(asked)}): nothing was run. Let env.py "
                         "take its URL from sqlalchemy.url")


def same_target(a: ProbeResult, b: ProbeResult) -> bool:
    return (same_database(a.url, b.url) and a.version_schema == b.version_schema
            and a.version_table == b.version_table)


def check_one_target(first: ProbeResult, other: ProbeResult) -> None:
    """UsageError (exit 2) when env.py goes on to migrate a second database or version table
    (alembic's multidb template, a loop over tenant schemas): the runner takes one advisory
    lock and checks one URL per run, and a target migrated without its own would be unlocked."""
    if not same_target(first, other):
        raise UsageError(
            f"env.py migrates more than one database or version table in one run: "
            f"{describe(first)}, then {describe(other)}; safe-migrate locks and checks one per "
            "run: nothing was run. Run it once per database or tenant (select it with -x)")


def describe(target: ProbeResult) -> str:
    return f"{target.version_schema}.{target.version_table} in {mask(target.url)}"


def probe(project: Project, expect: URL | None = None, *,
          read: Callable[[Connection, ProbeResult], None] | None = None,
          load: Callable[[], object] | None = None) -> ProbeResult:
    """What env.py connects to; with `expect` (the URL the user gave), refused when not that.

    `load`, when given, runs where alembic builds the revision graph: inside env.py's
    `run_migrations()`, once env.py did its own setup (History.load).

    `read`, when given, runs on env.py's own connection once the database is known to be the
    one asked for (status reads the catalog there rather than opening a connection of its
    own); what it raises comes out as itself, not as an env.py failure.
    """
    found: list[ProbeResult] = []
    heads_read: list[tuple[str, ...]] = []  # one per run_migrations(), in env.py's order
    read_failed: list[Exception] = []

    def configure(original: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        connection = kwargs.get("connection")
        if connection is not None:
            target = where_env_py_connects(connection, kwargs)
            found.append(target)
            check_database(target.url, expect)  # before alembic reads anything there
            check_one_target(found[0], target)
        quiet_alembic()
        original(*args, **kwargs)

    def no_steps(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        # alembic read the version table for us, as `alembic current` does (no table: ()).
        heads_read.append(tuple(heads))
        if load is not None and len(heads_read) == 1:
            try:
                load()
            except Exception as exc:  # kept: env.py may swallow it
                read_failed.append(exc)
                raise
        if read is not None and len(heads_read) == 1 and found and context.connection:
            try:
                read(context.connection, found[0])
            except Exception as exc:  # noqa: BLE001 - re-raised below, past env.py's handling
                read_failed.append(exc)
        return []

    env = EnvironmentContext(project.config, project.script, fn=no_steps, dont_mutate=True)
    env.configure = functools.partial(configure, env.configure)  # type: ignore[method-assign]
    try:
        with env, fresh_attributes(project.config):
            project.script.run_env()
    except Exception as exc:  # noqa: BLE001 - env.py is the user's code
        if read_failed:
            raise read_failed[0] from None
        raise env_py_failure(exc) from None
    if not found:
        raise UsageError("env.py did not connect to a database (offline-only env.py?)")
    for target in found:  # again: an env.py may have swallowed the first refusal
        check_database(target.url, expect)
        check_one_target(found[0], target)
    if read_failed:
        raise read_failed[0]
    found[0].heads = heads_read[0] if heads_read else ()
    return found[0]

