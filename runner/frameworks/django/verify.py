"""`safe-migrate verify --framework django`: the stairway on a scratch database.

Every migration in Django's full plan order: migrate forward to it, back to the one before it
in its app (`migrate APP PREV`), forward again, each through Django's own executor. The first
irreversible or failing migration is named; a failed forward step stops the walk (later
migrations build on it), a failed backward step is reported and the walk goes on.
The scratch database is the Alembic path's
(runner.frameworks.alembic.commands.verify.scratch_database).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

from runner.errors import PreflightError
from runner.frameworks.alembic.commands.verify import Failure, describe_error, scratch_database
from runner.frameworks.django import project as dj
from runner.logging import get_logger
from runner.settings import Settings

FORWARD, BACKWARD, REFORWARD = "upgrade", "downgrade", "re-upgrade"


class Stairway:
    def __init__(self, connection: Any, log: Any) -> None:
        self.connection = connection
        self.log = log
        self.steps = 0
        self.failures: list[Failure] = []
        self.stopped: str | None = None

    def _migrate(self, target: tuple[str, str | None]) -> None:
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(self.connection)  # what django_migrations says now
        executor.migrate([target])

    def walk(self, migrations: list[Any], loader: Any) -> None:
        for migration in migrations:
            key = (migration.app_label, migration.name)
            step = dj.step_of(migration, loader)
            previous = str(step.previous).split(" ", 1)[1]
            back: tuple[str, str | None] = (key[0], None if previous == "zero" else previous)
            forward = functools.partial(self._migrate, (key[0], key[1]))
            if not self._step(step.id, FORWARD, forward):
                self.stopped = f"{step.id} does not apply: later migrations build on it"
                return
            if self._step(step.id, BACKWARD, functools.partial(self._migrate, back)):
                self._step(step.id, REFORWARD, forward)

    def _step(self, name: str, direction: str, fn: Callable[[], None]) -> bool:
        self.steps += 1
        started = time.monotonic()
        error: str | None = None
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a migration can raise anything
            error = describe_error(exc)
            dj.end_broken_atomic(self.connection)
        self.log.info("verify.step", revision=name, direction=direction, ok=error is None,
                      duration_ms=round((time.monotonic() - started) * 1000))
        if error is not None:
            self.failures.append(Failure(name, direction, error))
            self.log.error("verify.failed", revision=name, direction=direction, error=error)
        return error is None


def run(settings: Settings, args: argparse.Namespace) -> int:
    log = get_logger().bind(run_id=settings.run_id)
    log.info("run.start", command="verify", framework="django")
    with scratch_database(settings, log, keep=args.keep) as scratch:
        connection = dj.setup(settings.django_settings, settings.database_alias, scratch.url)
        try:
            loader = dj.load_graph()
            from django.db.migrations.executor import MigrationExecutor

            full = MigrationExecutor(connection).migration_plan(loader.graph.leaf_nodes(),
                                                                clean_start=True)
            stairway = Stairway(connection, log)
            stairway.walk([m for m, _ in full], loader)
        finally:
            connection.close()
    lines = [f"verify: {len(full)} migration(s), {stairway.steps} step(s), "
             f"{len(stairway.failures)} failed"]
    lines += [f"  FAILED {f.describe()}" for f in stairway.failures]
    if stairway.stopped:
        lines.append(f"  stopped: {stairway.stopped}")
    print("\n".join(lines))
    failures = stairway.failures
    log.info("run.done", outcome="ok" if not failures else "failed", steps=stairway.steps,
             failed=len(failures))
    if failures:
        first = failures[0]
        raise PreflightError(
            f"verify: {len(failures)} step(s) failed; the first: {first.describe()}",
            failures=[f.to_dict() for f in failures])
    return 0
