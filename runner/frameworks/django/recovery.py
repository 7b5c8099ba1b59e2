"""Recovery in Django's terms: `migrate APP PREVIOUS --fake` is the stamp, `sqlmigrate
--backwards` the rollback template; the leftovers and their DROPs are the core's."""

from __future__ import annotations

from typing import Any

from runner.recovery.plan import (
    CLEAN_ROLLBACK,
    INSPECT_QUERIES,
    VERIFICATION_FAILED,
    Failure,
    RecoveryPlan,
    _leftover,
)


def fake_command(stamp: str) -> str:
    """`shop 0002_x` -> the command that records shop as being at 0002_x, running nothing."""
    return f"python manage.py migrate {stamp} --fake"


def sqlmigrate(loader: Any, connection: Any, step_id: str, *, backwards: bool) -> str:
    """`manage.py sqlmigrate APP NAME [--backwards]`, through the loader's collect_sql."""
    app, name = step_id.split(".", 1)
    migration = loader.get_migration_by_prefix(app, name)
    target = (app, migration.name)
    plan = [(loader.graph.nodes[target], backwards)]
    return "\n".join(loader.collect_sql(plan))


def build_plan(failure: Failure, *, current: list[str], options: str, rollback_file: str,
               backwards_sql: str | None = None) -> RecoveryPlan:
    """What the person on call runs next (recovery.plan.build_plan's Django twin)."""
    stamp = failure.stamp_target
    rollback = [obj.drop_sql() for obj in failure.leftovers]
    executable = [s for s in rollback if not s.lstrip().startswith("--")]
    notes = [s for s in rollback if s.lstrip().startswith("--")]
    notes += [f"{obj.describe()} appeared while the failed migration ran but its code does not "
              "name it: not dropped; check whether it is yours" for obj in failure.unattributed]
    where = failure.path or f"migration {failure.failed_revision}"
    if failure.path and failure.line:
        where += f":{failure.line}"
    upgrade = f"safe-migrate upgrade {options}"
    commands: list[str] = []
    if failure.status == VERIFICATION_FAILED:
        commands += [f"safe-migrate status {options}",
                     "# record what the schema really matches, per app: "
                     + fake_command("APP MIGRATION"), upgrade]
        forward = ("the migrations ran but django_migrations does not record them all, or "
                   "they left an invalid index: check, then record the truth with --fake")
    elif failure.status == CLEAN_ROLLBACK:
        commands += [f"# fix {where}, then:", upgrade]
        notes.insert(0, "the failed migration was rolled back entirely: nothing is left behind")
        forward = f"fix {where} and run upgrade again; django_migrations does not record it"
        backwards_sql = None
    elif not failure.leftovers_known:
        commands += [f"# inspect the database by hand, undo what {where} left, then:",
                     f"safe-migrate recover {options} --mark-resolved --note 'what you did'",
                     upgrade]
        notes += ["the leftovers could not be recorded: unknown, not clean", *INSPECT_QUERIES]
        forward = f"part of {where} committed and what it left is unknown: inspect, undo"
    else:
        if executable:
            commands.append(f"safe-migrate recover {options} --execute   "
                            "# drops only what the failed run recorded")
            commands.append(f"psql \"$DATABASE_URL\" -f {rollback_file}   # the same, by hand")
        if failure.failed_revision and failure.failed_revision in current:
            commands.append(fake_command(stamp) + "   # it is recorded as applied: unrecord it")
        commands += [f"# fix {where}, then:", upgrade]
        forward = (f"after the rollback SQL the database is at {stamp} for that app; make "
                   f"{where} safe to re-run and run upgrade again")
    return RecoveryPlan(
        status=failure.status, current_revision=current, failed_revision=failure.failed_revision,
        stamp_target=stamp, leftover_objects=[_leftover(o) for o in failure.leftovers],
        rollback_sql=rollback, downgrade_sql_template=backwards_sql, forward_option=forward,
        commands=commands, error=failure.error, notes=notes, run_id=failure.run_id,
        leftovers_known=failure.leftovers_known,
        unattributed_objects=[_leftover(o) for o in failure.unattributed])
