"""One target of a fleet through the single-database upgrade (UpgradeJob + Migrator).

A target already at the target revision costs env.py's one read of its version table: no
advisory lock, no ledger row, no artifacts folder, no snapshot. Otherwise it gets everything a
single run gets: its own connection, advisory lock (database + version table), timeouts,
retries, ledger row, artifacts in `<run>/<name>/` and exit code; schema snapshots only with
--fleet-snapshots.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from runner.artifacts import Artifacts
from runner.db.sessions import Sessions
from runner.errors import ExitCode, SafeMigrateError, outcome_name
from runner.fleet.pool import BY_INTERRUPT, NOT_STARTED, Result
from runner.fleet.targets import Resolved
from runner.frameworks.alembic.migrate import Migrator
from runner.frameworks.alembic.planning.history import History
from runner.frameworks.alembic.probe import check_database, where_env_py_connects
from runner.frameworks.alembic.project import Project, set_url
from runner.logging import get_logger
from runner.settings import Settings
from runner.urls import mask, mask_text

# This process's own sessions, per database: each forked worker fills its own (Sessions
# never reuses or closes one inherited through fork()).
SESSIONS = Sessions()


def close_sessions() -> None:
    """At a worker's (or an inline fleet's) end: the kept sessions end cleanly."""
    SESSIONS.close()


@dataclass
class Fleet:
    """What every target shares: loaded once, before the workers are forked."""

    settings: Settings
    args: argparse.Namespace
    project: Project
    history: History
    expected: list[str]  # the heads the target revision means
    targets: list[Resolved]
    pg_dump: Path | None  # --fleet-snapshots: the pg_dump found once for all
    ini_url: str | None  # alembic.ini's own sqlalchemy.url, for targets without a URL
    probed: bool = False  # this process ran the full probe once (see _upgrade)


def target_settings(fleet: Fleet, target: Resolved) -> Settings:
    return for_target(fleet.settings, target, snapshots=fleet.pg_dump is not None)


def for_target(base: Settings, target: Resolved, *, snapshots: bool = False) -> Settings:
    """The run's settings, for one target: its URL, the common -x then its own, its folder."""
    return dataclasses.replace(
        base, database_url=target.url, env_py_url=target.given,
        x_args=[*base.x_args, *target.target.x_args],
        artifacts_dir=base.artifacts_dir / target.name, schema_diff=snapshots,
        termination_log=Path(os.devnull))  # the fleet writes the one summary line


def point_project(project: Project, settings: Settings, ini_url: str | None) -> None:
    """env.py reads the URL and the -x arguments from the shared Config at each run."""
    given = settings.env_py_url or settings.database_url
    if given is not None:
        set_url(project.config, given.render_as_string(hide_password=False))
    elif ini_url is not None:
        set_url(project.config, ini_url)
    project.config.cmd_opts.x = list(settings.x_args)  # type: ignore[union-attr]


def run_target(fleet: Fleet, index: int, interrupted: threading.Event) -> Result:
    target = fleet.targets[index]
    result: Result = {"name": target.name,
                      "database_url": mask(target.url) if target.url else None,
                      "x": dict(target.target.x)}
    if interrupted.is_set():  # handed over just as the signal came: never started
        return {**result, "outcome": NOT_STARTED, "exit_code": None,
                "not_started_because": BY_INTERRUPT}
    started = time.monotonic()
    # `fleet_target`: each event says whose it is (`target` is the revision, in some events).
    log = get_logger().bind(run_id=fleet.settings.run_id, fleet_target=target.name)
    settings = target_settings(fleet, target)
    point_project(fleet.project, settings, fleet.ini_url)
    try:
        result.update(_upgrade(fleet, settings, log, interrupted))
    except SafeMigrateError as exc:
        result.update(outcome=outcome_name(exc.exit_code), exit_code=int(exc.exit_code),
                      error=" ".join(mask_text(exc.message).split()))
    except Exception as exc:  # noqa: BLE001 - a bug in one target must not end the fleet
        result.update(outcome="internal-error", exit_code=int(ExitCode.INTERNAL),
                      error=f"internal error (a bug, please report it): {type(exc).__name__}: "
                            f"{' '.join(mask_text(str(exc)).split())}")
    result["duration_ms"] = round((time.monotonic() - started) * 1000)
    return result


def _upgrade(fleet: Fleet, settings: Settings, log: Any,
             interrupted: threading.Event) -> dict[str, Any]:
    from runner.frameworks.alembic.commands.upgrade import UpgradeJob, _survey

    heads: tuple[str, ...] | None = None
    if not fleet.probed:
        # Once per process, the full probe: an env.py that migrates several databases or
        # version tables per run, or connects nowhere, is refused (exit 2) as in a single run.
        heads = _survey(settings, fleet.project, fleet.history)
        fleet.probed = True  # in this process (each worker has its own copy)
        if set(heads) == set(fleet.expected):
            return _up_to_date(heads)
    artifacts = Artifacts(settings.artifacts_dir)
    artifacts.prepare()
    finding: Future[Path] | None = None
    if fleet.pg_dump is not None:
        finding = Future()
        finding.set_result(fleet.pg_dump)
    job = UpgradeJob(settings, fleet.project, artifacts, log, finding, interrupted, fleet.args)
    job.expected = list(fleet.expected)
    migrator = job.migrator = _FleetMigrator(
        fleet.project, settings, fleet.history, settings.target, log=log,
        interrupted=interrupted, hooks=job, expected=fleet.expected)
    error: SafeMigrateError | None = None
    try:
        code = ExitCode(job.execute())
    except SafeMigrateError as exc:
        error, code = exc, exc.exit_code
    if migrator.at_target is not None and code == ExitCode.OK:
        shutil.rmtree(settings.artifacts_dir, ignore_errors=True)  # nothing ran: no record
        return _up_to_date(migrator.at_target)
    applied = [r.id for r in migrator.applied]
    before = list(migrator.db_heads_before or heads or ())
    if code == ExitCode.OK:
        after = list(fleet.expected)
    elif job.failure is not None:
        after = list(job.failure.heads)
    else:  # a linear history's last applied revision; else where it started
        after = applied[-1:] or before
    return {"outcome": outcome_name(code),
            "exit_code": int(code), "applied": applied, "heads_before": before,
            "heads_after": after, "artifacts": str(settings.artifacts_dir),
            **({"error": " ".join(mask_text(error.message).split())} if error else {})}


def _up_to_date(heads: tuple[str, ...]) -> dict[str, Any]:
    return {"outcome": "up-to-date", "exit_code": 0, "applied": [], "heads_before": list(heads),
            "heads_after": list(heads), "artifacts": None}


class _AtTarget(Exception):
    def __init__(self, heads: tuple[str, ...]) -> None:
        super().__init__("at the target revision")
        self.heads = heads


class _FleetMigrator(Migrator):
    """The single-database Migrator, which first reads the version table on env.py's own
    connection, before the advisory lock, the ledger or any other session: a target already
    at the target revision stops there (one env.py run, one read), and one that is behind
    runs env.py once, not once to look and once to migrate."""

    def __init__(self, *args: Any, expected: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions = SESSIONS  # the lock's and the side session, kept across targets
        self.expected = set(expected)
        self.at_target: tuple[str, ...] | None = None
        self._looked = False

    def _prepare(self, connection: Connection, opts: dict[str, Any]) -> None:
        if not self._looked:
            self._looked = True
            found = where_env_py_connects(connection, opts)
            check_database(found.url, self.settings.database_url)  # before reading anything
            heads = _version_heads(connection, found.version_schema, found.version_table)
            if heads is not None and set(heads) == self.expected:
                raise _AtTarget(heads)
        super()._prepare(connection, opts)

    def run(self) -> None:
        try:
            super().run()
        except _AtTarget as at:
            self.at_target = at.heads


def _version_heads(connection: Connection, schema: str,
                   table: str) -> tuple[str, ...] | None:
    """The version table's rows through env.py's connection, whatever its driver."""
    quote = connection.dialect.identifier_preparer.quote
    name = f"{quote(schema)}.{quote(table)}"
    if connection.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar() is None:
        return None
    return tuple(str(r[0]) for r in connection.execute(
        text(f"SELECT version_num FROM {name}")))

