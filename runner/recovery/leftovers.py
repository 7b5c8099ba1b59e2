"""What a partial apply left behind: the schema diff since right before the failed migration,
plus what only the catalog knows (an invalid index looks like a valid one in pg_dump)."""

from __future__ import annotations

from typing import Any

import psycopg

from runner.db import catalog
from runner.recovery.plan import Leftover
from runner.schema import snapshot


def find_leftovers(conn: psycopg.Connection[Any], before: str | None,
                   after: str | None) -> list[Leftover]:
    found: dict[tuple[str, str, str], Leftover] = {}
    for index in catalog.invalid_indexes(conn):
        obj = snapshot.SchemaObject("index", index["schema"], index["name"], index["table"])
        found[("index", index["schema"], index["name"])] = Leftover(
            "invalid_index", index["schema"], index["name"], index["table"], obj.drop_sql())
    if before is not None and after is not None:
        for obj in snapshot.created_objects(before, after):
            schema = obj.schema or "public"
            found.setdefault((obj.kind, schema, obj.name),
                             Leftover(obj.kind, schema, obj.name, obj.table, obj.drop_sql()))
    for con in catalog.not_valid_constraints(conn):
        key = ("constraint", con["schema"], con["name"])
        if key in found:
            continue  # created by the failed migration: its DROP is already planned
        table = snapshot.SchemaObject("table", con["schema"], con["table"]).qualified
        found[key] = Leftover(
            "not_valid_constraint", con["schema"], con["name"], con["table"],
            f"-- NOT VALID constraint {con['name']} on {con['schema']}.{con['table']}: run "
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {snapshot.quote_ident(con['name'])}; "
            "when the data allows, or drop it")
    return list(found.values())
