"""runner.db.catalog on a real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading

import psycopg
from support import libpq, open_transaction

from runner.db import catalog


def test_a_blocking_sessions_query_text_is_masked(db, sql) -> None:
    sql("CREATE TABLE t (id int)")
    blocker = ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE; "
               "SELECT 'postgresql://app:Secret9@db/prod', 'password=Secret9'")
    with open_transaction(db, blocker, hold=30) as pid, \
            psycopg.connect(libpq(db), autocommit=True) as watcher, \
            psycopg.connect(libpq(db), autocommit=True) as waiter:
        waiting = waiter.info.backend_pid
        thread = threading.Thread(target=lambda: _wait_for_lock(waiter))
        thread.start()
        try:
            sessions: list[catalog.Session] = []
            for _ in range(100):
                sessions = catalog.blocking_sessions(watcher, waiting)
                if sessions:
                    break
                watcher.execute("SELECT pg_sleep(0.05)")
            assert [s.pid for s in sessions] == [pid]
            query = sessions[0].query or ""
            assert "Secret9" not in query
            assert "postgresql://app:***@db/prod" in query and "password=***" in query
            assert "Secret9" not in str(sessions[0].to_dict())
        finally:
            watcher.execute("SELECT pg_cancel_backend(%s)", (waiting,))
            thread.join()


def _wait_for_lock(conn: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute("SELECT * FROM t")
