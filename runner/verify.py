"""The stairway's framework-neutral parts: the scratch database, one timed step, failures.

`verify` on either framework walks every migration forward, back and forward again on a
fresh database; what differs is how a step runs (alembic's command API, Django's executor).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from runner.db import catalog
from runner.db.connect import connect, first_line
from runner.settings import Settings
from runner.urls import mask, mask_text

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


@dataclass
class Failure:
    revision: str
    direction: str  # upgrade | downgrade | re-upgrade | rebuild | check
    error: str
    diffs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.revision} {self.direction}: {self.error}"


@dataclass
class Scratch:
    admin_url: URL  # the server's maintenance database
    url: URL  # the scratch database
    server_version_num: int
    pg_dump: str | None  # the embedded server's own pg_dump
    connect_timeout: float

    def _admin(self, statement: sql.Composed) -> None:
        conn = connect(self.admin_url, timeout=self.connect_timeout,
                       application_name="safe-migrate-verify")
        try:
            conn.execute(statement)  # autocommit: CREATE/DROP DATABASE refuse transactions
        finally:
            conn.close()

    def create(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._name)))

    def drop(self) -> None:
        # FORCE (PG 13+) ends sessions a failed step may have left behind.
        force = sql.SQL(" WITH (FORCE)") if self.server_version_num >= 130000 else sql.SQL("")
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(
            sql.Identifier(self._name), force))

    def recreate(self) -> None:
        self.drop()
        self.create()

    @property
    def _name(self) -> str:
        assert self.url.database is not None
        return self.url.database


@contextmanager
def scratch_database(settings: Settings, log: Any, *, keep: bool) -> Iterator[Scratch]:
    """A fresh database; on --database-url's server, else (or with --embedded) on an
    embedded PostgreSQL."""
    name = f"safe_migrate_verify_{secrets.token_hex(4)}"
    server = None
    if settings.database_url is not None and not settings.embedded:
        admin = settings.database_url.set(database="postgres")
        pg_dump = None
    else:
        from runner.embedded import EmbeddedPostgres

        server = EmbeddedPostgres().__enter__()  # a failed start leaves no folder behind
        admin, pg_dump = server.url(), str(server.pg_dump)
    try:
        conn = connect(admin, timeout=settings.connect_timeout,
                       application_name="safe-migrate-verify")
        try:
            version = catalog.server_version_num(conn)
        finally:
            conn.close()
        scratch = Scratch(admin_url=admin, url=admin.set(database=name),
                          server_version_num=version, pg_dump=pg_dump,
                          connect_timeout=settings.connect_timeout)
        scratch.create()
        log.info("verify.scratch", url=mask(scratch.url), embedded=server is not None)
        try:
            yield scratch
        finally:
            if keep:
                log.warning("verify.kept", url=mask(scratch.url),
                            data_dir=str(server.root) if server else None)
            else:
                scratch.drop()
    finally:
        if server is not None and not keep:
            server.destroy()


class Steps:
    """A stairway's count of steps and its failures: each step timed, logged, and on an
    error recorded (`_fail`) without stopping the walk; the caller decides what follows."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.failures: list[Failure] = []
        self.steps = 0
        self.stopped: str | None = None  # why the walk ended early

    def _step(self, revision: str, direction: str, fn: Callable[[], None]) -> bool:
        self.steps += 1
        started = time.monotonic()
        error: str | None = None
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a migration can raise anything
            error = describe_error(exc)
            self._after_error()
        duration_ms = round((time.monotonic() - started) * 1000)
        self.log.info("verify.step", revision=revision, direction=direction,
                      ok=error is None, duration_ms=duration_ms)
        if error is not None:
            self._fail(Failure(revision, direction, error))
        return error is None

    def _after_error(self) -> None:
        """Right after a step raised, before anything else runs on its connection."""

    def _fail(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.log.error("verify.failed", revision=failure.revision, direction=failure.direction,
                       error=failure.error)


def describe_error(exc: BaseException) -> str:
    """One masked line: the driver's message when there is one (not SQLAlchemy's wrapper)."""
    orig = getattr(exc, "orig", None) or exc
    text = first_line(mask_text(str(orig))) if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__
