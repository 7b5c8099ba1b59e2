"""Build the recovery plan (pure: from what the run and the catalog found) and render it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CLEAN_ROLLBACK = "clean-rollback"
PARTIAL_APPLY = "partial-apply"
VERIFICATION_FAILED = "verification-failed"


@dataclass(frozen=True)
class Leftover:
    kind: str  # invalid_index | not_valid_constraint | index | table | column | type | ...
    schema: str
    name: str
    table: str | None
    rollback_sql: str  # one statement, or a `--` comment when it cannot be undone


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoveryPlan:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def _revision_arg(revisions: list[str]) -> str:
    return " ".join(revisions) if revisions else "base"


def build_plan(*, status: str, current: list[str], failed_revision: str | None,
               failed_down_revision: str | None, failed_path: str | None,
               leftovers: list[Leftover], downgrade_sql: str | None, config_hint: str,
               error: str | None = None, expected: list[str] | None = None) -> RecoveryPlan:
    """What the person on call runs next. `safe-migrate recover --execute` does the same."""
    ini = f"-c {config_hint}"
    rollback = [obj.rollback_sql for obj in leftovers]
    executable = [sql for sql in rollback if not sql.lstrip().startswith("--")]
    notes: list[str] = []
    if status == VERIFICATION_FAILED:
        stamp = _revision_arg(expected or [])
        commands = [f"safe-migrate status {ini}",
                    f"# after checking the schema matches {stamp}:",
                    f"alembic {ini} stamp {stamp}",
                    f"safe-migrate upgrade {ini}"]
        forward = (f"the migrations ran but the version table says {current or ['base']}, "
                   f"not {expected}: check what env.py or a migration changed in the version "
                   "table, then stamp the revision the schema really matches")
    else:
        stamp = failed_down_revision or (current[0] if current else "base")
        commands = []
        if executable:
            commands.append(f"safe-migrate recover {ini} --execute   "
                            "# or run rollback.sql by hand, then stamp")
            commands.append('psql "$DATABASE_URL" -f rollback.sql   # the same statements')
        if current != [stamp] and stamp != "base":
            commands.append(f"alembic {ini} stamp {stamp}")
        where = failed_path or f"revision {failed_revision}"
        commands.append(f"# fix {where}, then:")
        commands.append(f"safe-migrate upgrade {ini}")
        if status == CLEAN_ROLLBACK:
            notes.append("the failed migration was rolled back entirely: nothing is left behind")
            forward = (f"fix {where} and run upgrade again; the database is at {stamp}, "
                       "the last good revision")
        else:
            forward = (f"after the rollback SQL the database matches {stamp}; make {where} "
                       "safe to re-run (IF NOT EXISTS, ADD VALUE IF NOT EXISTS) and run upgrade "
                       "again, or keep the leftovers and make the migration skip what exists")
            notes += [sql for sql in rollback if sql.lstrip().startswith("--")]
    return RecoveryPlan(
        status=status, current_revision=current, failed_revision=failed_revision,
        stamp_target=stamp, leftover_objects=[asdict(obj) for obj in leftovers],
        rollback_sql=rollback, downgrade_sql_template=downgrade_sql, forward_option=forward,
        commands=commands, error=error, notes=notes)


def render_markdown(plan: RecoveryPlan) -> str:
    lines = [f"# Recovery plan: {plan.status}", ""]
    if plan.error:
        lines += [f"**What failed:** {plan.error}", ""]
    lines += [f"- current revision: `{', '.join(plan.current_revision) or 'base'}`",
              f"- failed revision: `{plan.failed_revision or '-'}`",
              f"- stamp target: `{plan.stamp_target}`", ""]
    lines += ["## Left behind", ""]
    if plan.leftover_objects:
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
