"""What a failed run left behind (`Failure`), and the recovery plan built from it (pure: no I/O).

A `Failure` is written by `upgrade` when it fails (to the run ledger and to run.json) and read
back by `status` and `recover`, from any machine. Its leftovers are the objects recorded right
after the failure: recovery never diffs against the live schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from runner.db.objects import Recorded

CLEAN_ROLLBACK = "clean-rollback"
PARTIAL_APPLY = "partial-apply"
VERIFICATION_FAILED = "verification-failed"

# For a person when the leftovers could not be recorded: what changed most recently.
INSPECT_QUERIES = [
    "-- relations created or altered most recently (youngest catalog rows first):",
    "SELECT c.oid::regclass AS relation, c.relkind, age(c.xmin) AS xid_age FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', "
    "'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY age(c.xmin) LIMIT 20;",
    "-- indexes a cancelled CREATE INDEX CONCURRENTLY left INVALID:",
    "SELECT indexrelid::regclass, indrelid::regclass FROM pg_index WHERE NOT indisvalid;",
    "-- constraints added NOT VALID:",
    "SELECT conrelid::regclass, conname FROM pg_constraint WHERE NOT convalidated;",
]


@dataclass
class Failure:
    """What a failed run recorded for recovery."""

    run_id: str
    status: str
    failed_revision: str | None
    down_revision: str | list[str] | None
    path: str | None
    heads: list[str]  # the version table right after the failure
    leftovers: list[Recorded] = field(default_factory=list)  # recover drops these
    unattributed: list[Recorded] = field(default_factory=list)  # reported, never dropped
    leftovers_known: bool = True
    error: str | None = None
    expected: list[str] | None = None  # verification-failed: the heads the run aimed at
    # The line of `path` that raised (runner.db.failures.error_info).
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["leftovers"] = [o.to_dict() for o in self.leftovers]
        data["unattributed"] = [o.to_dict() for o in self.unattributed]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        values["leftovers"] = [Recorded.from_dict(o) for o in data.get("leftovers") or ()]
        values["unattributed"] = [Recorded.from_dict(o) for o in data.get("unattributed") or ()]
        return cls(**values)

    @property
    def stamp_target(self) -> str:
        if self.status == VERIFICATION_FAILED:
            return _revision_arg(self.expected or [])
        down = self.down_revision
        if isinstance(down, str):
            return down
        if isinstance(down, list) and down:
            return " ".join(down)
        return _revision_arg(self.heads) if self.failed_revision is None else "base"


@dataclass
class RecoveryPlan:
    status: str
    current_revision: list[str]
    failed_revision: str | None
    stamp_target: str | None
    leftover_objects: list[dict[str, Any]]
    rollback_sql: list[str]
    downgrade_sql_template: str | None
    forward_option: str
    commands: list[str]
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    leftovers_known: bool = True
    unattributed_objects: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _revision_arg(revisions: list[str]) -> str:
    return " ".join(revisions) if revisions else "base"


def build_plan(failure: Failure, *, current: list[str], config_hint: str,
               downgrade_sql: str | None = None, psql_url: str | None = None,
               rollback_file: str = "rollback.sql") -> RecoveryPlan:
    """What the person on call runs next. `safe-migrate recover --execute` does the same."""
    ini = f"-c {config_hint}"
    stamp = failure.stamp_target
    rollback = [obj.drop_sql() for obj in failure.leftovers]
    executable = [sql for sql in rollback if not sql.lstrip().startswith("--")]
    notes = [sql for sql in rollback if sql.lstrip().startswith("--")]
    notes += [f"{obj.describe()} appeared while the failed migration ran but its code does not "
              "name it: not dropped; check whether it is yours before touching it"
              for obj in failure.unattributed]
    where = failure.path or f"revision {failure.failed_revision}"
    if failure.path and failure.line:
        where += f":{failure.line}"  # the line that raised
    commands: list[str] = []
    if failure.status == VERIFICATION_FAILED:
        commands += [f"safe-migrate status {ini}", f"# after checking the schema matches {stamp}:"]
        if executable or current != stamp.split():
            commands.append(f"safe-migrate recover {ini} --execute")
        commands.append(f"safe-migrate upgrade {ini}")
        forward = (f"the migrations ran but the database is at {current or ['base']}, not "
                   f"{failure.expected}, or they left something invalid: check what env.py or a "
                   "migration did, then stamp the revision the schema really matches")
    elif failure.status == CLEAN_ROLLBACK:
        commands += [f"# fix {where}, then:", f"safe-migrate upgrade {ini}"]
        notes.insert(0, "the failed migration was rolled back entirely: nothing is left behind")
        forward = (f"fix {where} and run upgrade again; the database is at {stamp}, "
                   "the last good revision")
        downgrade_sql = None  # nothing of it was applied: there is nothing to downgrade
    elif not failure.leftovers_known:
        commands += [f"# inspect the database by hand (queries in the notes), undo what "
                     f"{where} left, then:",
                     f"safe-migrate recover {ini} --mark-resolved --note 'what you did'",
                     f"safe-migrate upgrade {ini}"]
        notes += ["the leftovers of this partial apply could not be recorded (no record was "
                  "taken before the step, or the database was unreachable after it): unknown, "
                  "not clean", *INSPECT_QUERIES]
        forward = (f"part of {where} committed and what it left is unknown: inspect, undo or "
                   "keep it, make the migration safe to re-run, mark the failure resolved")
    else:
        if executable or current != stamp.split():
            commands.append(f"safe-migrate recover {ini} --execute   "
                            "# drops only what the failed run recorded, then stamps")
        if executable and psql_url:
            commands.append(f'psql "{psql_url}" -f {rollback_file}   # the same statements, '
                            f"by hand; then: alembic {ini} stamp {stamp}")
        commands += [f"# fix {where}, then:", f"safe-migrate upgrade {ini}"]
        forward = (f"after the rollback SQL the database matches {stamp}; make {where} "
                   "safe to re-run (IF NOT EXISTS, ADD VALUE IF NOT EXISTS) and run upgrade "
                   "again, or keep the leftovers and make the migration skip what exists")
    return RecoveryPlan(
        status=failure.status, current_revision=current, failed_revision=failure.failed_revision,
        stamp_target=stamp, leftover_objects=[_leftover(o) for o in failure.leftovers],
        rollback_sql=rollback, downgrade_sql_template=downgrade_sql, forward_option=forward,
        commands=commands, error=failure.error, notes=notes, run_id=failure.run_id,
        leftovers_known=failure.leftovers_known,
        unattributed_objects=[_leftover(o) for o in failure.unattributed])


def _leftover(obj: Recorded) -> dict[str, Any]:
    return {**obj.to_dict(), "rollback_sql": obj.drop_sql()}


def render_markdown(plan: RecoveryPlan) -> str:
    lines = [f"# Recovery plan: {plan.status}", ""]
    if plan.error:
        lines += [f"**What failed:** {plan.error}", ""]
    lines += [f"- run: `{plan.run_id or '-'}`",
              f"- current revision: `{', '.join(plan.current_revision) or 'base'}`",
              f"- failed revision: `{plan.failed_revision or '-'}`",
              f"- stamp target: `{plan.stamp_target}`", ""]
    lines += ["## Left behind", ""]
    if not plan.leftovers_known:
        lines.append("**Unknown**: the leftovers could not be recorded; inspect by hand "
                     "(queries below).")
    elif plan.leftover_objects:
        for o in plan.leftover_objects:
            table = f" on `{o['table']}`" if o.get("table") else ""
            lines.append(f"- {o['kind']} `{o['schema']}.{o['name']}`{table}")
    else:
        lines.append("Nothing: the failed migration left no committed changes.")
    lines += ["", "## Rollback SQL", "", "```sql", *(plan.rollback_sql or ["-- none needed"]),
              "```", "", "## Commands", "", "```sh", *plan.commands, "```", "",
              "## Forward option", "", plan.forward_option, ""]
    if plan.downgrade_sql_template:
        lines += ["## Downgrade SQL of the failed revision (a template: review before use)", "",
                  "```sql", plan.downgrade_sql_template.strip(), "```", ""]
    if plan.notes:
        lines += ["## Notes", "", *[f"- {note.lstrip('- ')}" for note in plan.notes], ""]
    return "\n".join(lines)


def rollback_script(plan: RecoveryPlan) -> str:
    body = "\n".join(plan.rollback_sql) if plan.rollback_sql else "-- nothing to roll back"
    return f"-- safe-migrate recovery ({plan.status}); stamp target: {plan.stamp_target}\n{body}\n"
