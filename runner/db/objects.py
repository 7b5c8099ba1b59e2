"""What a failed run created, from the catalog: recorded before a non-transactional step,
compared right after its failure, re-checked before recovery drops anything.

Recovery must never drop what the failed run did not create. So:
- before a step that can commit part of itself, `existing()` records the identity (OID) of every
  user object, and the column count of every table: a few catalog queries, milliseconds;
- right after the step fails, `created_since()` lists what exists now and did not then, each
  with a hash of its definition (and a table with its row count);
- before `recover` drops one, `definitions()` reads it again: it is dropped only while its
  definition (and row count) is the one recorded.
Nothing is ever compared with the live schema at recovery time.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from runner.schema.snapshot import SchemaObject

_USER = ("{n}.nspname NOT IN ('pg_catalog', 'information_schema') "
         "AND {n}.nspname NOT LIKE 'pg\\_toast%%' AND {n}.nspname NOT LIKE 'pg\\_temp%%'")


def _user(alias: str) -> str:
    return _USER.format(n=alias)


def _not_extension_member(catalog: str, alias: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
            f"AND d.objid = {alias}.oid AND d.deptype = 'e')")


# One row per user object: kind, oid, schema, name, table, args, definition (when asked).
# `%(defs)s` switches the (costlier) definitions on; `%(known)s` leaves out known OIDs.
_RELATION_KIND = ("CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized_view' "
                  "WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' "
                  "ELSE 'table' END")
# An index a cancelled CREATE INDEX CONCURRENTLY left behind: pg_dump shows it as a valid one.
_INDEX_KIND = "CASE WHEN i.indisvalid THEN 'index' ELSE 'invalid_index' END"
_TABLE_DEF = ("(SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) "
              "|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum) "
              "FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
              "AND NOT a.attisdropped)")
_OBJECTS = f"""
SELECT CASE WHEN c.relkind IN ('i', 'I') THEN {_INDEX_KIND} ELSE {_RELATION_KIND} END,
  c.oid::bigint, n.nspname, c.relname, t.relname, NULL, c.relnatts::int,
  CASE WHEN %(defs)s THEN
    CASE WHEN c.relkind IN ('i', 'I') THEN pg_get_indexdef(c.oid)
         WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid)
         WHEN c.relkind = 'S' THEN (SELECT format_type(s.seqtypid, NULL) || ' ' || s.seqincrement
                                    FROM pg_sequence s WHERE s.seqrelid = c.oid)
         ELSE {_TABLE_DEF} END END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = i.indrelid
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I') AND {_user('n')}
  AND c.oid::bigint <> ALL(%(known)s) AND {_not_extension_member('pg_class', 'c')}
  -- an index that backs a constraint goes with the constraint
  AND c.oid NOT IN (SELECT k.conindid FROM pg_constraint k WHERE k.contype IN ('p', 'u', 'x'))
  -- a sequence owned by a column (serial, identity) goes with its column
  AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
           AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT CASE ty.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, ty.oid::bigint, n.nspname,
  ty.typname, NULL, NULL, NULL,
  CASE WHEN %(defs)s THEN
    CASE ty.typtype
      WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
                     FROM pg_enum e WHERE e.enumtypid = ty.oid)
      WHEN 'd' THEN format_type(ty.typbasetype, ty.typtypmod) || ' ' || coalesce(
        (SELECT string_agg(pg_get_constraintdef(k.oid), ' ' ORDER BY k.conname)
         FROM pg_constraint k WHERE k.contypid = ty.oid), '')
      WHEN 'r' THEN (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r
                     WHERE r.rngtypid = ty.oid)
      ELSE (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                              ORDER BY a.attnum)
            FROM pg_attribute a WHERE a.attrelid = ty.typrelid AND a.attnum > 0) END END
FROM pg_type ty JOIN pg_namespace n ON n.oid = ty.typnamespace
WHERE ty.typtype IN ('e', 'd', 'r', 'c') AND {_user('n')} AND ty.oid::bigint <> ALL(%(known)s)
  AND (ty.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = ty.typrelid) = 'c')
  AND {_not_extension_member('pg_type', 'ty')}
UNION ALL
SELECT 'enum_value', e.oid::bigint, n.nspname, quote_literal(e.enumlabel), ty.typname, NULL,
  NULL, CASE WHEN %(defs)s THEN e.enumlabel END
FROM pg_enum e JOIN pg_type ty ON ty.oid = e.enumtypid
JOIN pg_namespace n ON n.oid = ty.typnamespace
WHERE {_user('n')} AND e.oid::bigint <> ALL(%(known)s) AND {_not_extension_member('pg_type', 'ty')}
UNION ALL
SELECT CASE WHEN k.contype = 'f' THEN 'foreign_key' ELSE 'constraint' END, k.oid::bigint,
  n.nspname, k.conname, t.relname, NULL, NULL,
  CASE WHEN %(defs)s THEN pg_get_constraintdef(k.oid) END
FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
-- NOT NULL constraints (pg_constraint rows since PostgreSQL 18) belong to their column
WHERE k.conrelid <> 0 AND k.contype <> 'n' AND {_user('n')} AND k.oid::bigint <> ALL(%(known)s)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, p.oid::bigint, n.nspname,
  p.proname, NULL, pg_get_function_identity_arguments(p.oid), NULL,
  CASE WHEN %(defs)s THEN pg_get_functiondef(p.oid) END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p') AND {_user('n')} AND p.oid::bigint <> ALL(%(known)s)
  AND {_not_extension_member('pg_proc', 'p')}
UNION ALL
SELECT 'trigger', tg.oid::bigint, n.nspname, tg.tgname, c.relname, NULL, NULL,
  CASE WHEN %(defs)s THEN pg_get_triggerdef(tg.oid) END
FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT tg.tgisinternal AND {_user('n')} AND tg.oid::bigint <> ALL(%(known)s)
UNION ALL
SELECT 'schema', n.oid::bigint, NULL, n.nspname, NULL, NULL, NULL,
  CASE WHEN %(defs)s THEN n.nspname END
FROM pg_namespace n WHERE {_user('n')} AND n.nspname <> 'public' AND n.oid::bigint <> ALL(%(known)s)
  AND {_not_extension_member('pg_namespace', 'n')}
UNION ALL
SELECT 'extension', x.oid::bigint, NULL, x.extname, NULL, NULL, NULL,
  CASE WHEN %(defs)s THEN x.extversion END
FROM pg_extension x WHERE x.extname <> 'plpgsql' AND x.oid::bigint <> ALL(%(known)s)
"""
# Before a step, only identities are needed: every OID that could be one of those objects,
# and each table's column count. A superset is harmless (created_since() leaves out what is
# in it), so no joins and no filters beyond the kinds: OIDs below 16384 (FirstNormalObjectId)
# are initdb's. Measured on 70 tables: 0.7 ms, against 3.3 ms for _OBJECTS without definitions.
_EXISTING = """
SELECT oid::bigint, CASE WHEN relkind IN ('r', 'p', 'f') THEN relnatts::int END FROM pg_class
  WHERE oid >= 16384 AND relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I')
UNION ALL SELECT oid::bigint, NULL FROM pg_type
  WHERE oid >= 16384 AND typtype IN ('e', 'd', 'r', 'c')
UNION ALL SELECT oid::bigint, NULL FROM pg_enum WHERE oid >= 16384
UNION ALL SELECT oid::bigint, NULL FROM pg_constraint WHERE oid >= 16384 AND contype <> 'n'
UNION ALL SELECT oid::bigint, NULL FROM pg_proc WHERE oid >= 16384
UNION ALL SELECT oid::bigint, NULL FROM pg_trigger WHERE oid >= 16384
UNION ALL SELECT oid::bigint, NULL FROM pg_namespace WHERE oid >= 16384
UNION ALL SELECT oid::bigint, NULL FROM pg_extension WHERE oid >= 16384
"""
# Columns added to tables that existed before: attnum above the table's recorded column count.
_NEW_COLUMNS = """
SELECT 'column', NULL::bigint, n.nspname, a.attname, c.relname, NULL, NULL,
  format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
    || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
JOIN jsonb_each_text(%(natts)s::jsonb) AS known(oid, natts) ON known.oid::oid = c.oid
WHERE a.attnum > known.natts::int AND NOT a.attisdropped
"""


@dataclass(frozen=True)
class Existing:
    """The catalog before a step: every user object's OID, and each table's column count."""

    oids: frozenset[int]
    natts: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"oids": sorted(self.oids), "natts": {str(k): v for k, v in self.natts.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Existing:
        return cls(frozenset(int(o) for o in data["oids"]),
                   {int(k): int(v) for k, v in data["natts"].items()})


@dataclass(frozen=True)
class Recorded:
    """One object a failed step created, as recorded right after the failure."""

    kind: str  # table | index | column | constraint | foreign_key | type | enum_value | ...
    schema: str | None
    name: str
    table: str | None = None
    args: str | None = None
    definition: str = field(default="", compare=False)  # sha256 of definition (+ row count)

    @property
    def key(self) -> tuple[str, str | None, str, str | None, str | None]:
        """Identity: an index is the same index whether it became valid since or not."""
        return (_SAME_KIND.get(self.kind, self.kind), self.schema, self.name, self.table,
                self.args)

    def schema_object(self) -> SchemaObject:
        # Here, not at the top: the dump normalizer's patterns cost ~8 ms to compile, and a
        # successful run never drops anything.
        from runner.schema.snapshot import SchemaObject

        kind = _SAME_KIND.get(self.kind, self.kind)
        return SchemaObject(kind, self.schema, self.name, self.table, self.args)  # type: ignore[arg-type]

    def drop_sql(self) -> str:
        return self.schema_object().drop_sql()

    def describe(self) -> str:
        return self.schema_object().describe()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recorded:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def existing(conn: psycopg.Connection[Any]) -> Existing:
    # Prepared, without parameters (so its one generic plan serves every call): planning
    # this union costs more than running it on a small catalog (5.5 ms against 4 ms), and it
    # runs before every non-transactional step on the same connection.
    rows = conn.execute(_EXISTING, prepare=True).fetchall()
    return Existing(frozenset(int(r[0]) for r in rows),
                    {int(r[0]): int(r[1]) for r in rows if r[1] is not None})


def created_since(conn: psycopg.Connection[Any], before: Existing) -> list[Recorded]:
    """Objects that exist now and did not in `before`, parts of new objects left out (a new
    table's indexes, constraints and triggers go with it; a new enum's values with it), in
    an order safe to drop them (dependents first)."""
    rows = conn.execute(_OBJECTS, {"defs": True, "known": _oids(before.oids)}).fetchall()
    rows += conn.execute(_NEW_COLUMNS, {"natts": _natts_json(before)}).fetchall()
    found = [Recorded(r[0], r[2], r[3], r[4], r[5], definition=r[7] or "") for r in rows]
    new_tables = {(o.schema, o.name) for o in found if o.kind == "table"}
    new_types = {(o.schema, o.name) for o in found if o.kind == "type"}
    kept = [o for o in found if not _covered(o, new_tables, new_types)]
    return sorted((_hashed(conn, o) for o in kept), key=lambda o: _DROP_RANK[o.kind])


def definitions(conn: psycopg.Connection[Any],
                objects: list[Recorded]) -> dict[tuple[Any, ...], str]:
    """The current definition hash of each object that still exists (by identity)."""
    if not objects:
        return {}
    rows = conn.execute(_OBJECTS, {"defs": True, "known": _oids([])}).fetchall()
    wanted = {o.key for o in objects}
    live = {}
    for r in rows:
        obj = Recorded(r[0], r[2], r[3], r[4], r[5], definition=r[7] or "")
        if obj.key in wanted:
            live[obj.key] = _hashed(conn, obj).definition
    for obj in objects:
        if obj.kind == "column" and obj.key not in live:
            current = _column_definition(conn, obj)
            if current is not None:
                live[obj.key] = _digest(current)
    return live

_SAME_KIND = {"invalid_index": "index", "foreign_key": "constraint"}


def _oids(oids: Any) -> Any:
    """A bigint[] parameter, whatever the values (psycopg picks the narrowest int type)."""
    from psycopg.types.numeric import Int8

    return [Int8(o) for o in oids]


def _natts_json(before: Existing) -> str:
    import json

    return json.dumps({str(k): v for k, v in before.natts.items()})


def _covered(obj: Recorded, new_tables: set[tuple[str | None, str]],
             new_types: set[tuple[str | None, str]]) -> bool:
    if obj.kind == "enum_value":
        return (obj.schema, obj.table) in new_types
    if obj.kind in ("index", "invalid_index", "constraint", "foreign_key", "trigger"):
        return (obj.schema, obj.table) in new_tables
    return False


def _hashed(conn: psycopg.Connection[Any], obj: Recorded) -> Recorded:
    """The definition as a hash; a table's also covers its row count, so that a leftover
    table someone has since written rows into is never dropped."""
    text = obj.definition
    if obj.kind == "table":
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(obj.schema or "public"), sql.Identifier(obj.name))
        row = conn.execute(query).fetchone()
        text += f" rows={row[0] if row else 0}"
    return Recorded(obj.kind, obj.schema, obj.name, obj.table, obj.args,
                    definition=_digest(text))


def _column_definition(conn: psycopg.Connection[Any], obj: Recorded) -> str | None:
    row = conn.execute(
        """
        SELECT format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped
        """, (obj.schema, obj.table, obj.name)).fetchone()
    return None if row is None else str(row[0])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# Dependents first: views before their tables, foreign keys before the keys they reference,
# columns and tables before their types and functions, schemas last.
_DROP_RANK: dict[str, int] = {
    "trigger": 0, "view": 1, "materialized_view": 1, "foreign_key": 2, "index": 3,
    "invalid_index": 3,
    "constraint": 4, "column": 5, "table": 6, "sequence": 7, "function": 8, "procedure": 8,
    "domain": 9, "type": 10, "extension": 11, "schema": 12, "enum_value": 13,
}
