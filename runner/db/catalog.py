"""Read-only catalog queries. Each takes an open psycopg connection."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from runner.urls import mask_text

_USER_SCHEMAS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') "
                 "AND n.nspname NOT LIKE 'pg_toast%%'")


@dataclass(frozen=True)
class Session:
    """Another backend, as pg_stat_activity shows it."""

    pid: int
    application_name: str
    state: str | None
    query: str | None
    since: str | None

    def __post_init__(self) -> None:
        # Its query goes into events, run.json and error messages: never with a password.
        if self.query:
            object.__setattr__(self, "query", mask_text(self.query))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def server_version_num(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


def server_version(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0])


def current_database(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def advisory_lock_holders(conn: psycopg.Connection[Any], key: int) -> list[Session]:
    """Sessions holding the bigint advisory lock `key` in this database.

    A bigint key is stored as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
    `since` is when the holder's connection last went idle: our lock connections do
    nothing after taking the lock, so that is when the lock was taken.
    """
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    rows = conn.execute(
        """
        SELECT a.pid, a.application_name, a.state, left(a.query, 500), a.state_change
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchall()
    return [Session(pid=r[0], application_name=r[1], state=r[2], query=r[3], since=_iso(r[4]))
            for r in rows]


def blocking_sessions(conn: psycopg.Connection[Any], pid: int) -> list[Session]:
    rows = conn.execute(
        """
        SELECT b.pid, b.application_name, b.state, left(b.query, 500), b.xact_start
        FROM unnest(pg_blocking_pids(%s)) AS p(pid) JOIN pg_stat_activity b ON b.pid = p.pid
        ORDER BY b.pid
        """,
        (pid,),
    ).fetchall()
    return [Session(pid=r[0], application_name=r[1], state=r[2], query=r[3], since=_iso(r[4]))
            for r in rows]


def xact_status(conn: psycopg.Connection[Any], xid: str) -> str | None:
    """'committed', 'aborted', 'in progress', or None when too old to know."""
    row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
    return None if row is None else row[0]


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[dict[str, str]]:
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname, t.relname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid AND {_USER_SCHEMAS}
        ORDER BY 1, 2
        """
    ).fetchall()
    return [{"kind": "invalid_index", "schema": r[0], "name": r[1], "table": r[2]} for r in rows]


def not_valid_constraints(conn: psycopg.Connection[Any]) -> list[dict[str, str]]:
    rows = conn.execute(
        f"""
        SELECT n.nspname, t.relname, con.conname
        FROM pg_constraint con
        JOIN pg_class t ON t.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE NOT con.convalidated AND {_USER_SCHEMAS}
        ORDER BY 1, 2, 3
        """
    ).fetchall()
    return [{"kind": "not_valid_constraint", "schema": r[0], "table": r[1], "name": r[2]}
            for r in rows]


def version_heads(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[str, ...] | None:
    """The version table's rows, or None when it does not exist. Never creates it."""
    row = conn.execute("SELECT to_regclass(%s)",
                       (f'"{schema}"."{table}"',)).fetchone()
    if row is None or row[0] is None:
        return None
    query = sql.SQL("SELECT version_num FROM {}.{} ORDER BY 1").format(
        sql.Identifier(schema), sql.Identifier(table))
    return tuple(r[0] for r in conn.execute(query).fetchall())
