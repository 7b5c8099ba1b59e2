"""The advisory lock against a real server: a holder that lets go at the worst moment."""

from __future__ import annotations

import threading

import pytest

from runner.db import catalog, lock
from runner.db.connect import connect
from runner.errors import LockBusyError
from runner.logging import get_logger


def _lock(db) -> lock.AdvisoryLock:
    return lock.AdvisoryLock.open(db, "public", "alembic_version", timeout=5, run_id="test",
                                  log=get_logger(), interrupted=threading.Event())


def test_a_lock_released_between_the_try_and_the_holder_lookup_is_taken(db, monkeypatch, logs):
    runner_lock = _lock(db)
    holder = connect(db, timeout=5, application_name="holder", autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (runner_lock.key,))
        lookup = catalog.advisory_lock_holders

        def holder_lets_go_first(conn, key):
            # The race 16 runners hit: the try failed, then the holder ended its run.
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return lookup(conn, key)

        monkeypatch.setattr(lock.catalog, "advisory_lock_holders", holder_lets_go_first)
        runner_lock.acquire(0)  # the deadline has passed by the first miss
        assert runner_lock.held
        assert [e["event"] for e in logs] == ["lock.acquired"]
    finally:
        runner_lock.close()
        holder.close()


def test_a_held_lock_past_the_deadline_names_its_holder(db):
    runner_lock = _lock(db)
    holder = connect(db, timeout=5, application_name="holder", autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (runner_lock.key,))
        with pytest.raises(LockBusyError, match=r"held by pid \d+ \(holder\)"):
            runner_lock.acquire(0)
        assert not runner_lock.held
    finally:
        runner_lock.close()
        holder.close()
