"""The advisory lock against a real server: a holder that lets go at the worst moment."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from runner.db import catalog, lock
from runner.db.connect import connect
from runner.errors import LockBusyError
from runner.logging import get_logger


@pytest.fixture
def contended(db) -> Iterator[tuple[lock.AdvisoryLock, psycopg.Connection[Any]]]:
    """The runner's lock, not yet acquired, and another session that holds it."""
    runner_lock = lock.AdvisoryLock.open(db, "public", "alembic_version", timeout=5,
                                         run_id="test", log=get_logger(),
                                         interrupted=threading.Event())
    holder = connect(db, timeout=5, application_name="holder", autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (runner_lock.key,))
        yield runner_lock, holder
    finally:
        runner_lock.close()
        holder.close()


def test_a_lock_released_between_the_try_and_the_holder_lookup_is_taken(contended, monkeypatch,
                                                                        logs):
    runner_lock, holder = contended
    lookup = catalog.advisory_lock_holders

    def holder_lets_go_first(conn, key):
        # The race 16 runners hit: the try failed, then the holder ended its run.
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return lookup(conn, key)

    monkeypatch.setattr(lock.catalog, "advisory_lock_holders", holder_lets_go_first)
    runner_lock.acquire(0)  # the deadline has passed by the first miss
    assert runner_lock.held
    assert [e["event"] for e in logs] == ["lock.acquired"]


def test_a_held_lock_past_the_deadline_names_its_holder(contended):
    runner_lock, _ = contended
    with pytest.raises(LockBusyError, match=r"held by pid \d+ \(holder\)"):
        runner_lock.acquire(0)
    assert not runner_lock.held
