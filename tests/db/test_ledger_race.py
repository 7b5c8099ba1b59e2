"""Services with their own version tables (so their own advisory locks) share one ledger
table: the first runs of each create it at the same moment."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from runner.db import ledger
from runner.db.connect import connect


def _create_at_once(conns: list[psycopg.Connection[Any]]) -> list[Exception]:
    start, errors = threading.Barrier(len(conns)), []

    def create(conn: psycopg.Connection[Any]) -> None:
        books = ledger.Ledger(conn, "public", "safe_migrate_runs", ledger.identity(conn),
                              f"public.version_{id(conn)}")
        start.wait()
        try:
            books.ensure()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_runners_creating_the_ledger_at_once_all_go_on(db, sql, monkeypatch):
    for _ in range(5):  # the race has several outcomes (pg_type, pg_class, a late check)
        sql("DROP TABLE IF EXISTS public.safe_migrate_runs")
        # Six processes in real life: none has ensured this table yet (once per process).
        monkeypatch.setattr(ledger, "_ENSURED", set())
        conns = [connect(db, timeout=5, application_name="ledger-race", autocommit=True)
                 for _ in range(6)]
        try:
            assert _create_at_once(conns) == []
        finally:
            for conn in conns:
                conn.close()
        assert sql("SELECT to_regclass('public.safe_migrate_runs') IS NOT NULL") == [(True,)]
