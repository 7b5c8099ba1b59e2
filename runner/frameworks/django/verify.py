"""`safe-migrate verify --framework django`: the stairway on a scratch database.

Every migration in Django's full plan order: migrate forward to it, back to the one before it
in its app (`migrate APP PREV`), forward again, each through Django's own executor. The first
irreversible or failing migration is named; a failed forward step stops the walk (later
migrations build on it), a failed backward step is reported and the walk goes on.
The scratch database and the timed step are the core's (runner.verify).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from runner.errors import PreflightError
from runner.frameworks.django import project as dj
from runner.logging import get_logger
from runner.settings import Settings
from runner.verify import Steps, scratch_database

FORWARD, BACKWARD, REFORWARD = "upgrade", "downgrade", "re-upgrade"


class Stairway(Steps):
    def __init__(self, connection: Any, log: Any) -> None:
        super().__init__(log)
        self.connection = connection

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

    def _after_error(self) -> None:
        dj.end_broken_atomic(self.connection)


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
