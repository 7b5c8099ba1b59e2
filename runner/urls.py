"""Database URLs: parsing, driver normalization and masking (SQLAlchemy's URL does the work)."""

from __future__ import annotations

import re

import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from runner.errors import UsageError

_SYNC_DRIVER = "postgresql+psycopg"
_POSTGRES_NAMES = {"postgresql", "postgres"}
# Passwords embedded in free text (error messages from drivers, libpq conninfo strings,
# other sessions' queries). A URL's password runs to the *last* `@` of the word: a password
# with an unencoded `@` (u:p@ss@host) must not leave its tail in sight.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>\S+)(?=@)")
_KV_PASSWORD = re.compile(r"(?P<head>password\s*=\s*)(?P<pw>'[^']*'|\S+)", re.IGNORECASE)
# ALTER ROLE ... PASSWORD 'x' in a query text.
_SQL_PASSWORD = re.compile(r"(?P<head>\bPASSWORD\s+)(?P<pw>'(?:[^']|'')*')", re.IGNORECASE)
_PASSWORD_WORD = re.compile("password", re.IGNORECASE)
# Drivers quote the host they tried: "ss@host" / 'ss@host' is the tail of such a password.
_QUOTED_AT = re.compile(r"""(?<=["'])[^"'\s/:]*@(?=[^"'\s@/:]*["'])""")


def parse_url(text: str) -> URL:
    """Parse and normalize to the sync psycopg driver; UsageError (exit 2) when malformed."""
    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise UsageError(f"malformed database URL {mask_text(text)!r}") from None
    if url.host and "@" in url.host:
        raise UsageError(f"malformed database URL {mask_text(text)!r}: the password holds an "
                         "unencoded '@' (write it as %40)")
    backend = url.get_backend_name()
    if backend not in _POSTGRES_NAMES:
        raise UsageError(f"unsupported database URL {mask(url)!r}: safe-migrate runs on PostgreSQL")
    # asyncpg/psycopg2/pg8000/async psycopg: all run through sync psycopg 3 here.
    return url.set(drivername=_SYNC_DRIVER)


#: SQLAlchemy's major version: the user's, since safe-migrate runs in their virtualenv.
SQLALCHEMY_2 = int(sqlalchemy.__version__.split(".", 1)[0]) >= 2
# SQLAlchemy 1.4 has no psycopg 3 dialect (it came with 2.0).
_PSYCOPG3_DRIVERS = {"postgresql+psycopg", "postgresql+psycopg_async",
                     "postgres+psycopg", "postgres+psycopg_async"}


def env_py_driver() -> str:
    """The driver of a URL the runner makes for env.py (--embedded, verify's scratch
    database): psycopg 3 on SQLAlchemy 2, psycopg2 (1.4's default) on SQLAlchemy 1.4."""
    return _SYNC_DRIVER if SQLALCHEMY_2 else "postgresql+psycopg2"


def check_dialect(url: URL) -> None:
    """UsageError (exit 2) when the URL names a driver this SQLAlchemy has no dialect for."""
    if not SQLALCHEMY_2 and url.drivername in _PSYCOPG3_DRIVERS:
        raise UsageError(
            f"database URL {mask(url)!r} names {url.drivername}, a dialect SQLAlchemy "
            f"{sqlalchemy.__version__} does not have (psycopg 3 needs SQLAlchemy 2.0): use "
            "postgresql+psycopg2:// or postgresql+asyncpg://, or upgrade SQLAlchemy")


def mask(url: URL) -> str:
    text = url.render_as_string(hide_password=True)
    # A password's unencoded '@' made its tail part of the host: mask that too.
    return mask_text(text) if url.host and "@" in url.host else text


def mask_text(text: str) -> str:
    """Mask anything that looks like a password inside arbitrary text."""
    # Each pattern only where its word is: most log fields (and plan's SQL) hold none.
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    if _PASSWORD_WORD.search(text):
        text = _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)
        text = _SQL_PASSWORD.sub(lambda m: m.group("head") + "'***'", text)
    if "@" in text:
        text = _QUOTED_AT.sub("***@", text)
    return text


def same_database(a: URL, b: URL) -> bool:
    """Whether two URLs name the same database (host, port, name; driver and options aside)."""
    return (a.host or "", a.port or 5432, a.database) == (b.host or "", b.port or 5432,
                                                          b.database)


def libpq_kwargs(url: URL) -> dict[str, str]:
    """libpq connection parameters: the query string's, then the URL's own parts on top."""
    kwargs = {key: _first(value) or "" for key, value in url.query.items()}
    for key, value in (("host", url.host), ("port", url.port), ("user", url.username),
                       ("password", url.password), ("dbname", url.database)):
        if value:
            kwargs[key] = str(value)
    return kwargs


# libpq's environment variables, for the parameters a child process may need.
_PG_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
    "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


def libpq_params(url: URL) -> tuple[dict[str, str], dict[str, str]]:
    """Split a URL into libpq environment variables: (non-secret, secret).

    Child processes (pg_dump) get everything through PG* variables so that
    nothing, and above all not the password, shows in their argv.
    """
    kwargs = libpq_kwargs(url)
    env = {_PG_ENV[key]: value for key, value in kwargs.items() if key in _PG_ENV and value}
    secret = {"PGPASSWORD": kwargs["password"]} if kwargs.get("password") else {}
    return env, secret


def _first(value: str | tuple[str, ...] | None) -> str | None:
    if isinstance(value, tuple):
        return value[0] if value else None
    return value


def psql_url(url: URL) -> str:
    """A URL psql takes (libpq: no +driver), without the password: psql finds it in
    PGPASSWORD or ~/.pgpass, and the printed command never holds it."""
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
