"""Start a migration step's transaction and learn its id, in one round trip.

The id is what tells, after a failure, whether part of the step committed (autocommit_block,
a raw COMMIT): see Migrator._committed. Asked on its own, it costs a round trip per migration
on top of the BEGIN psycopg sends before the step's first statement; sent together with that
BEGIN (the simple query protocol takes both in one message), it costs nothing more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from sqlalchemy.engine import Connection

XID_QUERY = "SELECT pg_current_xact_id()::text"


def begin_step(connection: Connection, settings: str) -> str:
    """Begin the DBAPI transaction the step runs in, apply `settings` (the run's SETs) in it,
    and return its transaction id.

    The SETs ride in the same message: every step starts with the run's lock_timeout and
    statement_timeout, whatever an earlier migration set (`SET lock_timeout = 0`).
    """
    raw = connection.connection.driver_connection
    if (isinstance(raw, psycopg.Connection) and not raw.autocommit
            and raw.info.transaction_status == TransactionStatus.IDLE):
        result = raw.pgconn.exec_(begin_command(raw) + b"; " + settings.encode() + b"; "
                                  + XID_QUERY.encode())
        value = result.get_value(0, 0) if result.status == ExecStatus.TUPLES_OK else None
        if value is not None:
            return value.decode()
        if raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            raw.pgconn.exec_(b"ROLLBACK")  # BEGIN went through, the query did not
    # Any other driver or state, or the fast path failed: the ordinary path, which also
    # raises the error SQLAlchemy would (a dead connection is an OperationalError).
    run_each(connection, settings)
    return str(connection.exec_driver_sql(XID_QUERY).scalar_one())


def run_each(connection: Connection, statements: str) -> None:
    """`a; b` one statement at a time: asyncpg prepares what it runs, and a prepared
    statement holds one command."""
    for statement in statements.split("; "):
        connection.exec_driver_sql(statement)


def begin_command(raw: psycopg.Connection[object]) -> bytes:
    """The BEGIN psycopg itself would send, from the connection's public settings (SQLAlchemy
    sets isolation_level on them for an engine's isolation_level=)."""
    parts = [b"BEGIN"]
    if raw.isolation_level is not None:
        parts.append(b"ISOLATION LEVEL " + raw.isolation_level.name.replace("_", " ").encode())
    if raw.read_only is not None:
        parts.append(b"READ ONLY" if raw.read_only else b"READ WRITE")
    if raw.deferrable is not None:
        parts.append(b"DEFERRABLE" if raw.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


SESSION_QUERY = ("SELECT pg_backend_pid(), current_setting('transaction_read_only') = 'on', "
                 "pg_is_in_recovery(), array_to_json(current_schemas(false))::text")


@dataclass(frozen=True)
class Session:
    """The migration session, as env.py left it."""

    pid: int
    read_only: bool
    in_recovery: bool
    schemas: tuple[str, ...]  # its search path (existing schemas): where unqualified names go


def prepare_session(connection: Connection, settings: list[str]) -> Session:
    """Apply `settings` (the run's SETs) to the migration session and describe it: one round
    trip on psycopg (one simple-query message), one per statement on any other driver."""
    raw = connection.connection.driver_connection
    if (isinstance(raw, psycopg.Connection)
            and raw.info.transaction_status == TransactionStatus.IDLE):
        result = raw.pgconn.exec_("; ".join([*settings, SESSION_QUERY]).encode())
        if result.status == ExecStatus.TUPLES_OK and result.ntuples == 1:
            pid, read_only, recovery, schemas = (result.get_value(0, i) for i in range(4))
            if pid is not None:
                return Session(int(pid), read_only == b"t", recovery == b"t",
                               tuple(json.loads(schemas or b"[]")))
        if raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            raw.pgconn.exec_(b"ROLLBACK")
    # Any other driver, or the fast path failed: the ordinary path, which also raises the
    # error SQLAlchemy would.
    for statement in settings:
        connection.exec_driver_sql(statement)
    pid, read_only, recovery, schemas = connection.exec_driver_sql(SESSION_QUERY).one()
    return Session(int(pid), bool(read_only), bool(recovery), tuple(json.loads(schemas or "[]")))
