"""The session-level advisory lock that lets one runner at a time migrate a database."""

from __future__ import annotations

import contextlib
import hashlib
import select
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

from runner.db import catalog
from runner.db.connect import connect, first_line
from runner.db.sessions import Sessions
from runner.errors import DatabaseUnreachableError, InterruptedRunError, LockBusyError
from runner.urls import mask_text

if TYPE_CHECKING:  # not at run time: --framework django never imports SQLAlchemy
    from sqlalchemy.engine import URL

_LOG_EVERY = 5.0  # seconds between lock.waiting events after the first


def version_table_key(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """The lock key of the version table schema.table in conn's database."""
    return lock_key(catalog.current_database(conn), schema, table)


def lock_key(database: str, schema: str, table: str) -> int:
    """A signed bigint from the database and the version table, so that two services with
    their own version tables in one database do not block each other."""
    digest = hashlib.blake2b(f"safe-migrate\0{database}\0{schema}\0{table}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock:
    """Held on its own AUTOCOMMIT connection: an idle-in-transaction holder would make
    CREATE INDEX CONCURRENTLY wait on its snapshot (ALEMBIC-NOTES)."""

    def __init__(self, conn: psycopg.Connection[Any], key: int, *, log: Any,
                 interrupted: threading.Event, poll: float = 0.25) -> None:
        self.conn = conn
        self.key = key
        self.log = log
        self.interrupted = interrupted
        self.poll = poll
        self.held = False
        self.application_name = ""  # the session's, when open() named it

    def acquire(self, wait: float) -> None:
        try:
            self._acquire(wait)
        except psycopg.OperationalError as exc:
            # The server restarted (or the session was terminated) while we waited: the
            # Job may retry (exit 7), nothing ran.
            raise DatabaseUnreachableError(
                "the advisory lock's session was lost while waiting for the lock: "
                f"{first_line(mask_text(str(exc)))}; nothing was run") from None

    def _acquire(self, wait: float) -> None:
        started = time.monotonic()
        last_log = -_LOG_EVERY
        retried_free = False
        while True:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            if row is not None and row[0]:
                self.held = True
                self.log.info("lock.acquired", key=self.key,
                              waited_ms=round((time.monotonic() - started) * 1000))
                return
            waited = time.monotonic() - started
            holders = catalog.advisory_lock_holders(self.conn, self.key)
            holder = holders[0] if holders else None
            if holder is None and not retried_free:
                # Released between the two queries: free now, so try again at once, even
                # past the deadline (giving up on a free lock would be a false exit 4).
                retried_free = True
                continue
            retried_free = False
            if waited >= wait:
                who = (f"pid {holder.pid} ({holder.application_name or 'no application_name'}) "
                       f"since {holder.since}") if holder else "another session"
                raise LockBusyError(
                    f"advisory lock held by {who}; gave up after --advisory-lock-wait "
                    f"{wait:g}s", holder=holder.to_dict() if holder else None)
            if waited - last_log >= _LOG_EVERY:
                last_log = waited
                self.log.info("lock.waiting", key=self.key, waited_ms=round(waited * 1000),
                              holder_pid=holder.pid if holder else None,
                              holder_application_name=holder.application_name if holder else None,
                              holder_since=holder.since if holder else None)
            if self.interrupted.wait(min(self.poll, max(wait - waited, 0.01))):
                raise InterruptedRunError("interrupted while waiting for the advisory lock")

    @classmethod
    def open(cls, url: URL, schema: str, table: str, *, timeout: float, run_id: str, log: Any,
             interrupted: threading.Event, sessions: Sessions | None = None) -> AdvisoryLock:
        """A lock on its own connection, named so that `lock.waiting` shows who holds it
        (a fleet worker's kept session for this database, when it has one)."""
        name = f"safe-migrate-lock {run_id}"
        if sessions is None:
            conn = connect(url, timeout=timeout, application_name=name)
            lock = cls(conn, version_table_key(conn, schema, table), log=log,
                       interrupted=interrupted)
        else:
            conn = sessions.take(url, application_name=name, timeout=timeout)
            lock = cls(conn, lock_key(sessions.database(conn), schema, table), log=log,
                       interrupted=interrupted)
        lock.application_name = name
        return lock

    def alive(self) -> bool:
        """Whether the session that holds the lock is still there: a session that died (its
        backend terminated, the server restarted) has released the lock with it.

        Asked before every migration, so it must cost nothing in the common case: an idle
        session receives nothing unless the server ends it (an error message, then EOF), so
        only a readable socket is worth a round trip to confirm.
        """
        if self.conn.closed:
            return False
        readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
        if not readable:
            return True
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        self.release()
        self.conn.close()

    def release(self) -> bool:
        """Free the lock. True when the session is known to hold it no more (the session
        may then serve another target); False when that is unsure (close the session)."""
        if not self.held:
            return True
        self.held = False
        freed = False
        # If the connection is gone, so is the session lock: nothing left to free.
        with contextlib.suppress(psycopg.Error):
            row = self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,)).fetchone()
            freed = row is not None and row[0] is True
        self.log.info("lock.released", key=self.key)
        return freed
