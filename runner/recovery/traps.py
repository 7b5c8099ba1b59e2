"""The IF NOT EXISTS trap, refused before anything runs (exit 3).

A failed CREATE INDEX CONCURRENTLY leaves an INVALID index; a failed ADD CONSTRAINT ... NOT
VALID run leaves a constraint that checks nothing old. A re-run whose step creates the same name
with IF NOT EXISTS "succeeds" over it and is recorded as applied: a unique index that enforces
nothing. Framework-neutral: it reads the pending steps' code (a revision file, a Django
migration module).
"""

from __future__ import annotations

import re

from runner.errors import PreflightError
from runner.frameworks.base import Step, read_source


def refuse_invalid_names(invalid: list[dict[str, str]], pending: list[Step],
                          schemas: tuple[str, ...]) -> None:
    """The IF NOT EXISTS trap: a pending migration that creates an index or constraint whose
    name exists as an INVALID index / NOT VALID constraint would "succeed" over it. Only where
    its names go: the session's search path, or a schema its code names (another tenant's
    invalid index of the same name is no trap for this one)."""
    if not invalid:
        return
    for rec in pending:
        source = read_source(rec.path)
        for obj in invalid:
            if (obj["schema"] in schemas or names_schema(source, obj["schema"])) and creates_name(
                    source, obj["name"]):
                kind = "an INVALID index" if obj["kind"] == "invalid_index" else (
                    "a NOT VALID constraint")
                raise PreflightError(
                    f"pending migration {rec.id} creates {obj['name']}, which exists as "
                    f"{kind} on {obj['schema']}.{obj['table']}: a re-run with IF NOT EXISTS "
                    "would skip it and record the migration as applied over it; run "
                    "`safe-migrate recover`, "
                    "or drop it (DROP INDEX CONCURRENTLY) / validate it first",
                    revision=rec.id, name=obj["name"])


def names_schema(source: str, schema: str) -> bool:
    """Whether a revision's code names `schema` (schema="x", x.table, "x"."t") as a word."""
    return re.search(rf"(?<![\w$]){re.escape(schema)}(?![\w$])", source, re.I) is not None


_CREATES = (r"create_index\(\s*(?:op\.f\(\s*)?['\"]{name}['\"]",
            r"create_(?:unique|check|foreign_key|exclude|primary_key)_constraint\(\s*"
            r"(?:op\.f\(\s*)?['\"]{name}['\"]",
            r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
            r"\"?{name}\"?[\s(]",
            r"ADD\s+CONSTRAINT\s+\"?{name}\"?\s",
            # Django: models.Index(..., name="x"), models.UniqueConstraint(..., name="x")
            r"(?:Index|Constraint)\((?:[^()]|\([^()]*\))*?\bname\s*=\s*['\"]{name}['\"]")


def creates_name(source: str, name: str) -> bool:
    """Whether a revision's code creates an index or constraint called `name`."""
    if name.lower() not in source.lower():
        return False  # the common case, without a pattern
    escaped = re.escape(name)
    return any(re.search(p.format(name=escaped), source, re.I) for p in _CREATES)
