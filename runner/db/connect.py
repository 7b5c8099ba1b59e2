"""Side connections (lock, monitor, status) straight through psycopg, with connect retries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from runner.errors import DatabaseUnreachableError, SafeMigrateError, UsageError
from runner.urls import libpq_kwargs, mask, mask_text

if TYPE_CHECKING:  # SQLAlchemy only where env.py runs: --framework django never imports it
    from sqlalchemy.engine import URL

APPLICATION_NAME = "safe-migrate"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError) and classify_connect_error(exc) is None


def classify_connect_error(exc: BaseException) -> UsageError | None:
    """Errors no retry can fix and that are configuration, not reachability (exit 2)."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc)
    if sqlstate == "3D000" or ("does not exist" in text and "database" in text):
        return UsageError(f"database does not exist: {first_line(mask_text(text))}")
    return None


#: Drivers a URL may name that safe-migrate does not depend on: the package that brings each.
DRIVER_PACKAGES = {"asyncpg": "asyncpg", "psycopg2": "psycopg2-binary", "pg8000": "pg8000"}
NO_URL = ("no database URL: pass --database-url URL, or set DATABASE_URL (DATABASE_URL_FILE "
          "for a mounted secret), or try it on a throwaway server with --embedded")


# The database or the role forbids the run, outside any migration: configuration that no
# retry fixes (exit 2), never "a bug".
_CONFIGURATION_STATES = {
    "42501": "the database role lacks a privilege the run needs (create in the version "
             "table's schema, read and write the version table): grant it, or run as its owner",
    "25006": "the database is read-only (default_transaction_read_only, or a hot standby): "
             "point the run at the primary",
    "3F000": "the schema does not exist (version_table_schema?): create it before the run",
}


def classify_database_error(exc: BaseException) -> UsageError | None:
    """A privilege, read-only or missing-schema error, as a one-line UsageError."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg2: pgcode
    hint = _CONFIGURATION_STATES.get(str(state))
    if hint is None:
        return None
    return UsageError(f"{first_line(mask_text(str(orig)))} (SQLSTATE {state}): {hint}",
                      sqlstate=state)


def read_only_error(in_recovery: bool) -> UsageError:
    what = "a hot standby (in recovery)" if in_recovery else "read-only (transaction_read_only)"
    return UsageError(f"the database is {what}: nothing was run; point the run at the "
                      "primary, or turn default_transaction_read_only off", sqlstate="25006")


def env_py_failure(exc: BaseException) -> SafeMigrateError:
    """What env.py raised before migrations could start, as the SPEC's error."""
    import sqlalchemy.exc  # env.py ran: SQLAlchemy is loaded already

    if isinstance(exc, SafeMigrateError):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name in DRIVER_PACKAGES:
        return UsageError(f"the database URL's driver needs the {exc.name} package, which is "
                          f"not installed: pip install {DRIVER_PACKAGES[exc.name]}")
    if _no_url(exc):
        return UsageError(NO_URL)
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError) and "postgresql.psycopg" in str(exc):
        # alembic.ini's (or env.py's own) postgresql+psycopg URL on SQLAlchemy 1.4
        return UsageError(
            f"SQLAlchemy {sqlalchemy.__version__} has no postgresql+psycopg dialect (psycopg 3 "
            "needs SQLAlchemy 2.0): use postgresql+psycopg2:// or postgresql+asyncpg:// in "
            "sqlalchemy.url / --database-url, or upgrade SQLAlchemy")
    configuration = classify_database_error(exc)
    if configuration is not None:
        return configuration
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        orig = getattr(exc, "orig", exc)
        return classify_connect_error(orig) or DatabaseUnreachableError(
            f"cannot connect to the database: {first_line(mask_text(str(orig)))}")
    return UsageError(f"env.py failed before connecting: {type(exc).__name__}: "
                      f"{first_line(mask_text(str(exc)))}")


def _no_url(exc: BaseException) -> bool:
    """env.py built its engine from an empty (or absent) sqlalchemy.url."""
    if isinstance(exc, KeyError):  # engine_from_config() on a section without the key
        return exc.args in (("url",), ("sqlalchemy.url",))
    import sqlalchemy.exc

    return isinstance(exc, sqlalchemy.exc.ArgumentError) and (
        "Could not parse SQLAlchemy URL from given URL string" in str(exc)
        or "got None" in str(exc))


def outlive_idle_timeout(conn: psycopg.Connection[Any]) -> None:
    """Our sessions idle while the migrations run (the advisory lock's above all): a server
    or role `idle_session_timeout` (PostgreSQL 14+) would end them, and the lock with its
    session, silently. Switched off for the session itself."""
    if conn.info.server_version >= 140000:
        conn.execute("SET idle_session_timeout = 0")
        if not conn.autocommit:
            conn.commit()


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def connect(url: URL, *, timeout: float, autocommit: bool = True,
            application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    """Connect, retrying briefly (jittered backoff) for up to `timeout` seconds.

    Unreachable host or failed authentication after the retries: exit 7.
    A database that does not exist: exit 2 at once.
    """
    # Here, not at the top: plan and verify's probe import this module but never connect
    # through it, and tenacity costs ~6 ms of their start-up.
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception,
        stop_after_delay,
        wait_exponential_jitter,
    )

    kwargs: dict[str, Any] = dict(libpq_kwargs(url))
    kwargs.setdefault("connect_timeout", max(2, min(10, int(timeout) or 2)))
    kwargs["application_name"] = application_name
    try:
        for attempt in Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_delay(timeout),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                conn = psycopg.connect(autocommit=autocommit, **kwargs)
                outlive_idle_timeout(conn)
                return conn
    except psycopg.OperationalError as exc:
        usage = classify_connect_error(exc)
        if usage is not None:
            raise usage from None
        raise DatabaseUnreachableError(
            f"cannot connect to {mask(url)}: {first_line(mask_text(str(exc)))}") from None
    except RetryError as exc:  # pragma: no cover - reraise=True re-raises the last error
        raise DatabaseUnreachableError(f"cannot connect to {mask(url)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
