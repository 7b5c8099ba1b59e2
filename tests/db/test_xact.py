"""begin_step: the step's transaction and its id in one round trip, on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from psycopg.pq import TransactionStatus
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL, Connection
from support import libpq

from runner.db.xact import begin_command, begin_step

SETTINGS = "SET lock_timeout = '1234ms'; SET statement_timeout = '0'"


@pytest.fixture
def connect(db: URL) -> Iterator[Any]:
    engines = []

    def make(**engine_options: Any) -> Connection:
        engine = create_engine(db, poolclass=pool.NullPool, **engine_options)
        engines.append(engine)
        return engine.connect()

    yield make
    for engine in engines:
        engine.dispose()


def _status(connection: Connection) -> TransactionStatus:
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw.info.transaction_status


def test_the_id_is_that_of_the_transaction_the_step_runs_in(connect):
    with connect() as connection, connection.begin():
        assert _status(connection) == TransactionStatus.IDLE  # SQLAlchemy sent nothing yet
        xid = begin_step(connection, SETTINGS)
        assert _status(connection) == TransactionStatus.INTRANS
        connection.exec_driver_sql("CREATE TABLE t (id int)")
        # Same transaction: psycopg saw it open and sent no BEGIN of its own.
        assert connection.exec_driver_sql("SELECT pg_current_xact_id()::text").scalar() == xid
    with connect() as other:
        assert other.exec_driver_sql(
            f"SELECT pg_xact_status('{xid}')").scalar() == "committed"
        assert other.exec_driver_sql("SELECT to_regclass('t') IS NOT NULL").scalar()


def test_a_rolled_back_step_leaves_its_id_aborted(connect):
    with connect() as connection:
        transaction = connection.begin()
        xid = begin_step(connection, SETTINGS)
        connection.exec_driver_sql("CREATE TABLE t (id int)")
        transaction.rollback()
        assert connection.exec_driver_sql(
            f"SELECT pg_xact_status('{xid}')").scalar() == "aborted"


@pytest.mark.parametrize(("options", "expected"), [
    ({}, ("read committed", "off")),
    ({"isolation_level": "SERIALIZABLE"}, ("serializable", "off")),
    ({"isolation_level": "REPEATABLE READ"}, ("repeatable read", "off")),
])
def test_the_engine_isolation_level_is_kept(connect, options, expected):
    with connect(**options) as connection, connection.begin():
        begin_step(connection, SETTINGS)
        assert connection.exec_driver_sql(
            "SELECT current_setting('transaction_isolation'), "
            "current_setting('transaction_read_only')").one() == expected


def test_begin_command_spells_what_psycopg_would_send(db):
    with psycopg.connect(libpq(db)) as raw:
        assert begin_command(raw) == b"BEGIN"
        raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        raw.read_only = True
        raw.deferrable = False
        assert begin_command(raw) == b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY " \
                                     b"NOT DEFERRABLE"
        raw.execute("SELECT 1")  # psycopg's own BEGIN, with the same settings
        assert raw.execute("SELECT current_setting('transaction_isolation'), "
                           "current_setting('transaction_read_only')").fetchone() == (
            "repeatable read", "on")


def test_an_already_open_transaction_is_the_one_reported(connect):
    with connect() as connection, connection.begin():
        connection.exec_driver_sql("SELECT 1")  # psycopg began the transaction itself
        xid = begin_step(connection, SETTINGS)
        assert connection.exec_driver_sql("SELECT pg_current_xact_id()::text").scalar() == xid


def test_a_dead_connection_raises_sqlalchemys_operational_error(connect, sql):
    with connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connection.commit()
        sql("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sqlalchemy.exc.OperationalError), connection.begin():
            begin_step(connection, SETTINGS)


def test_a_failing_query_after_begin_raises_its_own_error(connect, monkeypatch):
    # Without the ROLLBACK the ordinary path would only say "current transaction is aborted".
    monkeypatch.setattr("runner.db.xact.XID_QUERY", "SELECT 1/0")
    with connect() as connection, pytest.raises(sqlalchemy.exc.DataError) as caught, \
            connection.begin():
        begin_step(connection, SETTINGS)
    assert isinstance(caught.value.orig, psycopg.errors.DivisionByZero)


def test_the_run_settings_apply_in_the_step_whatever_was_set_before(connect):
    """A migration's `SET lock_timeout = 0` must not carry over into the next step."""
    with connect() as connection:
        connection.exec_driver_sql("SET lock_timeout = 0")
        connection.commit()
        with connection.begin():
            begin_step(connection, SETTINGS)
            assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "1234ms"
