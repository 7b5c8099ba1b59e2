"""The runner's own psycopg sessions (the advisory lock's, the monitor/ledger side session),
kept for the next target of the same database in one fleet worker.

A backend start costs both sides CPU (a fork and a catalog-cache warm-up on the server, the
handshake here); a fleet of tenant schemas in one database would pay two per target. What
stays per target: the lock is taken and released per target (its key is the database and
the target's version table), and every kept session is checked before it is handed out
again: one the server ended (terminated, restarted, idle_session_timeout) is dropped and a
new one opened.
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg.pq import TransactionStatus

from runner.db import catalog, ledger
from runner.db.connect import connect
from runner.db.ledger import Identity

if TYPE_CHECKING:  # the Django path never imports SQLAlchemy
    from sqlalchemy.engine import URL


class Sessions:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, str], psycopg.Connection[Any]] = {}
        # Per session (weak: a session dropped elsewhere takes its entries with it).
        Conn = psycopg.Connection[Any]
        self._databases: WeakKeyDictionary[Conn, str] = WeakKeyDictionary()
        self._identities: WeakKeyDictionary[Conn, Identity] = WeakKeyDictionary()
        self._pids: WeakKeyDictionary[Conn, int] = WeakKeyDictionary()  # who opened it

    def take(self, url: URL, *, application_name: str, timeout: float) -> psycopg.Connection[Any]:
        """A live session to `url` named `application_name`: a kept one, else a new one."""
        kept = self._idle.pop(_key(url, application_name), None)
        if kept is not None and self._pids.get(kept) == os.getpid() and usable(kept):
            return kept
        if kept is not None:
            self._forget(kept)
        conn = connect(url, timeout=timeout, application_name=application_name)
        self._pids[conn] = os.getpid()
        return conn

    def give(self, url: URL, application_name: str, conn: psycopg.Connection[Any]) -> None:
        """Keep `conn` for the next target, if it is idle and healthy; else close it."""
        key = _key(url, application_name)
        if (key in self._idle or self._pids.get(conn, os.getpid()) != os.getpid()
                or conn.closed or conn.broken
                or conn.info.transaction_status != TransactionStatus.IDLE):
            self._forget(conn)
            return
        self._pids[conn] = os.getpid()  # a session the run reopened itself is kept too
        self._idle[key] = conn

    def database(self, conn: psycopg.Connection[Any]) -> str:
        """current_database(), asked once per session."""
        name = self._databases.get(conn)
        if name is None:
            name = self._databases[conn] = catalog.current_database(conn)
        return name

    def identity(self, conn: psycopg.Connection[Any]) -> Identity:
        """The database's identity (the ledger's), asked once per session."""
        found = self._identities.get(conn)
        if found is None:
            found = self._identities[conn] = ledger.identity(conn)
        return found

    def close(self) -> None:
        for conn in list(self._idle.values()):
            self._forget(conn)
        self._idle.clear()

    def _forget(self, conn: psycopg.Connection[Any]) -> None:
        # A session inherited through fork() is the parent's socket: never closed here (that
        # would end the parent's session), only dropped.
        if self._pids.pop(conn, os.getpid()) == os.getpid():
            with contextlib.suppress(psycopg.Error):
                conn.close()
        self._databases.pop(conn, None)
        self._identities.pop(conn, None)


def usable(conn: psycopg.Connection[Any]) -> bool:
    """Whether a kept, idle session is still there. An idle session receives nothing unless
    the server ends it (an error message, then EOF): only a readable socket is worth a round
    trip to confirm (as AdvisoryLock.alive)."""
    if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    if not readable:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _key(url: URL, application_name: str) -> tuple[str, str]:
    return url.render_as_string(hide_password=False), application_name
