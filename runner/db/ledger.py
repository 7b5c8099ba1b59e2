"""The run ledger: one row per run in the database it migrates (`safe_migrate_runs`).

Written on the runner's own autocommit connection, so a row survives the migration's
rollback, a killed pod and a lost artifacts folder: `status` and `recover` read it from any
machine. Like Flyway's `flyway_schema_history` (`success = false` blocks the next migrate
until `repair`), an unresolved partial apply blocks the next `upgrade` until `recover`.

Cost: a few statements per run, and one per non-transactional step (its pre-step record);
transactional steps write nothing (the version table says where a killed run stopped).
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.types.json import Jsonb

from runner.errors import UsageError

DEFAULT_TABLE = "safe_migrate_runs"
UNRESOLVED = ("partial-apply", "verification-failed")

_COLUMNS = """
    run_id text PRIMARY KEY,
    command text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    outcome text NOT NULL,
    exit_code integer,
    target text,
    heads_before text[],
    heads_after text[],
    error text,
    host text,
    tool_version text,
    database_url text,
    system_identifier text,
    database_oid bigint,
    database_name text,
    version_table text,
    running jsonb,
    steps jsonb,
    recovery jsonb,
    resolved_at timestamptz,
    resolved_by text,
    resolved_from text,
    resolution text
"""
# Privilege and read-only failures of the ledger's own statements: configuration (exit 2).
_CONFIG_STATES = {"42501": "permission denied", "25006": "the database is read-only",
                  "3F000": "the schema does not exist"}


@dataclass(frozen=True)
class Identity:
    """Which database a run was for: a restored copy or another server never matches."""

    system_identifier: str | None
    database_oid: int
    database_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"system_identifier": self.system_identifier, "database_oid": self.database_oid,
                "database_name": self.database_name}

    def matches(self, data: dict[str, Any]) -> bool:
        return (str(data.get("system_identifier")) == str(self.system_identifier)
                and data.get("database_oid") == self.database_oid
                and data.get("database_name") == self.database_name)


def identity(conn: psycopg.Connection[Any]) -> Identity:
    row = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), d.oid::bigint, "
        "d.datname FROM pg_database d WHERE d.datname = current_database()").fetchone()
    assert row is not None
    return Identity(row[0], int(row[1]), str(row[2]))


def who() -> dict[str, str]:
    """Who and where, for the ledger: the pod name in Kubernetes (its hostname)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = os.environ.get("USER", "unknown")
    return {"user": user, "host": os.environ.get("POD_NAME") or socket.gethostname()}


def parse_table(name: str | None, version_schema: str) -> tuple[str, str]:
    """--ledger-table: NAME or SCHEMA.NAME; the version table's schema by default."""
    if not name:
        return version_schema, DEFAULT_TABLE
    schema, _, table = name.rpartition(".")
    if not table:
        raise UsageError(f"--ledger-table {name!r}: expected NAME or SCHEMA.NAME")
    return schema or version_schema, table


class Ledger:
    def __init__(self, conn: psycopg.Connection[Any], schema: str, table: str,
                 me: Identity, version_table: str) -> None:
        self.conn = conn
        self.schema = schema
        self.table = table
        self.me = me
        self.version_table = version_table
        self._name = sql.Identifier(schema, table)
        self.new = False  # this run created the table: it holds no earlier run of ours

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s)",
                                (sql.Identifier(self.schema, self.table).as_string(self.conn),)
                                ).fetchone()
        return row is not None and row[0] is not None

    def ensure(self) -> None:
        """Create the table if missing (under the advisory lock: no race between runners).

        Once per process and table: a fleet worker's next target with the same ledger
        (`--ledger-table` shared, or the next run of one database) asks nothing; should
        the table be gone by then, start() creates it again."""
        if self._ensured_key in _ENSURED:
            return
        if self.exists():
            _ENSURED.add(self._ensured_key)
            return
        try:
            self._run(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                self._name, sql.SQL(_COLUMNS)), (), doing="create the run ledger")
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable,
                psycopg.errors.DuplicateObject):
            # Another service (its own version table, so its own lock) created it at the same
            # moment: IF NOT EXISTS does not cover that race in the catalog, which fails on
            # pg_type's or pg_class's unique index or on their own checks (type or relation
            # "already exists"), depending on when the other one committed.
            if not self.exists():
                raise
        # Missing under our lock: no row for our version table can be in it but ours (rows
        # for it are written under that lock only), so nothing to look up there this run.
        self.new = True
        _ENSURED.add(self._ensured_key)

    @property
    def _ensured_key(self) -> tuple[str | None, int, str, str]:
        return self.me.system_identifier, self.me.database_oid, self.schema, self.table

    # -- writes ------------------------------------------------------------------------------
    def start(self, run_id: str, command: str, *, target: str | None, database_url: str,
              tool_version: str) -> None:
        where = who()
        insert = (sql.SQL(
            "INSERT INTO {} (run_id, command, outcome, target, host, tool_version, database_url, "
            "system_identifier, database_oid, database_name, version_table) "
            "VALUES (%s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s)").format(self._name),
            (run_id, command, target, f"{where['user']}@{where['host']}", tool_version,
             database_url, self.me.system_identifier, self.me.database_oid,
             self.me.database_name, self.version_table))
        try:
            self._run(*insert, doing="write the run ledger")
        except psycopg.errors.UndefinedTable:
            # Dropped since this process last ensured it (ensure() asks once per process).
            _ENSURED.discard(self._ensured_key)
            self.ensure()
            self._run(*insert, doing="write the run ledger")

    def update(self, run_id: str, **fields: Any) -> None:
        """One UPDATE, one round trip: jsonb fields as given, the rest as they are."""
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = now()" if value is _NOW else "{} = %s").format(sql.Identifier(name))
            for name, value in fields.items())
        values = [Jsonb(v) if name in _JSONB and v is not None else v
                  for name, v in fields.items() if v is not _NOW]
        self._run(sql.SQL("UPDATE {} SET {} WHERE run_id = %s").format(self._name, assignments),
                  (*values, run_id), doing="write the run ledger")

    def finish(self, run_id: str, **fields: Any) -> None:
        self.update(run_id, ended_at=_NOW, **fields)

    def resolve(self, run_id: str, resolution: str, note: str | None = None) -> None:
        where = who()
        self._run(sql.SQL(
            "UPDATE {} SET resolved_at = now(), resolved_by = %s, resolved_from = %s, "
            "resolution = %s WHERE run_id = %s").format(self._name),
            (where["user"], where["host"], resolution + (f": {note}" if note else ""), run_id),
            doing="write the run ledger")

    def close_dead_runs(self, run_id: str) -> None:
        """Rows of runs that died with nothing to recover (their lock is ours now)."""
        self._run(sql.SQL(
            "UPDATE {} SET outcome = 'died', ended_at = now() WHERE outcome = 'running' "
            "AND run_id <> %s AND version_table = %s AND NOT coalesce("
            "(running ->> 'transactional')::boolean = false, false)").format(self._name),
            (run_id, self.version_table), doing="write the run ledger")

    # -- reads -------------------------------------------------------------------------------
    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """This database's runs for this version table (not a restored copy's), newest first."""
        cur = self.conn.execute(sql.SQL(
            "SELECT * FROM {} WHERE version_table = %s ORDER BY started_at DESC, run_id DESC "
            "LIMIT %s").format(self._name), (self.version_table, limit))
        names = [c.name for c in cur.description or ()]
        rows = [_plain(dict(zip(names, row, strict=True))) for row in cur.fetchall()]
        return [r for r in rows if self.me.matches(r)]

    def get(self, run_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute(sql.SQL("SELECT * FROM {} WHERE run_id = %s").format(self._name),
                                (run_id,))
        row = cur.fetchone()
        names = [c.name for c in cur.description or ()]
        return None if row is None else _plain(dict(zip(names, row, strict=True)))

    def unresolved(self, *, own: str | None = None) -> list[dict[str, Any]]:
        """Failures of this database that nobody has recovered or marked resolved: partial
        applies, and runs that died inside a non-transactional step. Newest first."""
        cur = self.conn.execute(sql.SQL(
            "SELECT * FROM {} WHERE version_table = %s AND resolved_at IS NULL "
            "AND run_id IS DISTINCT FROM %s AND (outcome = ANY(%s) OR (outcome = 'running' "
            "AND (running ->> 'transactional')::boolean = false)) "
            "ORDER BY started_at DESC, run_id DESC").format(self._name),
            (self.version_table, own, list(UNRESOLVED)))
        names = [c.name for c in cur.description or ()]
        rows = [_plain(dict(zip(names, row, strict=True))) for row in cur.fetchall()]
        return [r for r in rows if self.me.matches(r)]

    def _run(self, query: sql.Composed, params: tuple[Any, ...], *, doing: str) -> None:
        try:
            self.conn.execute(query, params)
        except psycopg.Error as exc:
            reason = _CONFIG_STATES.get(exc.sqlstate or "")
            if reason is None:
                raise
            raise UsageError(
                f"cannot {doing} {self.qualified}: {reason}; grant the role CREATE on schema "
                f"{self.schema} (and write access to the table), pick another place with "
                "--ledger-table SCHEMA.NAME, or run with --no-ledger (recovery then relies on "
                "the local artifacts alone)") from None


# The ledgers this process created or found: (system identifier, database oid, schema, table).
_ENSURED: set[tuple[str | None, int, str, str]] = set()
_NOW = object()  # a marker: the column is set to the server's now()
_JSONB = {"running", "steps", "recovery"}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: timestamps as ISO text."""
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
