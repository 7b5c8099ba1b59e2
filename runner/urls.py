"""Database URLs: parsing, driver normalization and masking (SQLAlchemy's URL does the work).

SQLAlchemy is imported lazily: --framework django never needs it (its import costs more than
the rest of a run's fixed costs), so that path parses with PgURL below, a read-only stand-in
with the parts of SQLAlchemy's URL the shared core uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote_plus, unquote

from runner.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise UsageError(f"malformed database URL {mask_text(text)!r}") from None
    return _checked(url, text)


def _checked(url: URL, text: str) -> URL:
    if url.host and "@" in url.host:
        raise UsageError(f"malformed database URL {mask_text(text)!r}: the password holds an "
                         "unencoded '@' (write it as %40)")
    backend = url.get_backend_name()
    if backend not in _POSTGRES_NAMES:
        raise UsageError(f"unsupported database URL {mask(url)!r}: safe-migrate runs on PostgreSQL")
    # asyncpg/psycopg2/pg8000/async psycopg: all run through sync psycopg 3 here.
    return url.set(drivername=_SYNC_DRIVER)


# SQLAlchemy's own pattern (sqlalchemy/engine/url.py), so both paths split a URL alike: the
# password ends at the first '@' (an unencoded '@' lands in the host, refused above).
_URL_PATTERN = re.compile(r"""
    (?P<name>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """, re.X)


@dataclass(frozen=True)
class PgURL:
    """The read side of SQLAlchemy's URL (same attribute and method names) without
    SQLAlchemy: what --framework django's sessions, masking and pg_dump need."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    def get_backend_name(self) -> str:
        return self.drivername.split("+", 1)[0]

    def set(self, **parts: Any) -> PgURL:
        return replace(self, **parts)

    def _replace(self, **parts: Any) -> PgURL:  # as the NamedTuple's: None clears a part
        return replace(self, **parts)

    def render_as_string(self, hide_password: bool = True) -> str:
        text = f"{self.drivername}://"
        if self.username is not None:
            text += _quote(self.username)
            if self.password is not None:
                text += ":" + ("***" if hide_password else _quote(self.password))
            text += "@"
        if self.host is not None:
            text += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            text += f":{self.port}"
        if self.database is not None:
            text += "/" + self.database
        pairs = [(key, value) for key, values in sorted(self.query.items())
                 for value in (values if isinstance(values, tuple) else (values,))]
        if pairs:
            text += "?" + "&".join(f"{quote_plus(key)}={quote_plus(value)}" for key, value in pairs)
        return text

    def __repr__(self) -> str:  # as SQLAlchemy's: never the password
        return self.render_as_string(hide_password=True)


def _quote(text: str) -> str:
    return re.sub(r"[:@/]", lambda m: f"%{ord(m.group(0)):X}", text)


def parse_pg_url(text: str) -> URL:
    """parse_url without SQLAlchemy (--framework django): a PgURL, typed as the URL whose
    parts it has, so that the core's signatures stay SQLAlchemy's."""
    match = _URL_PATTERN.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"malformed database URL {mask_text(text)!r}")
    parts = match.groupdict()
    try:
        port = int(parts["port"]) if parts["port"] else None
    except ValueError:
        raise UsageError(f"malformed database URL {mask_text(text)!r}") from None
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(parts["query"] or "", keep_blank_values=True):
        old = query.get(key)
        query[key] = value if old is None else (*((old,) if isinstance(old, str) else old), value)
    url = PgURL(drivername=parts["name"],
                username=unquote(parts["username"]) if parts["username"] is not None else None,
                password=unquote(parts["password"]) if parts["password"] is not None else None,
                host=parts["ipv6host"] or parts["ipv4host"] or None, port=port,
                database=unquote(parts["database"]) if parts["database"] else None, query=query)
    return _checked(cast("URL", url), text)


def pg_url(**parts: Any) -> URL:
    """A PgURL (psycopg 3 driver) from its parts, typed as SQLAlchemy's URL."""
    return cast("URL", PgURL(drivername=_SYNC_DRIVER, **parts))


def _sqlalchemy_version() -> str:
    import sqlalchemy

    return str(sqlalchemy.__version__)


def __getattr__(name: str) -> bool:
    """SQLALCHEMY_2, SQLAlchemy's major version (the user's, since safe-migrate runs in their
    virtualenv), computed on first use: importing SQLAlchemy is not free."""
    if name == "SQLALCHEMY_2":
        return int(_sqlalchemy_version().split(".", 1)[0]) >= 2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# SQLAlchemy 1.4 has no psycopg 3 dialect (it came with 2.0).
_PSYCOPG3_DRIVERS = {"postgresql+psycopg", "postgresql+psycopg_async",
                     "postgres+psycopg", "postgres+psycopg_async"}


def env_py_driver() -> str:
    """The driver of a URL the runner makes for env.py (--embedded, verify's scratch
    database): psycopg 3 on SQLAlchemy 2, psycopg2 (1.4's default) on SQLAlchemy 1.4."""
    return _SYNC_DRIVER if __getattr__("SQLALCHEMY_2") else "postgresql+psycopg2"


def check_dialect(url: URL) -> None:
    """UsageError (exit 2) when the URL names a driver this SQLAlchemy has no dialect for."""
    if url.drivername in _PSYCOPG3_DRIVERS and not __getattr__("SQLALCHEMY_2"):
        raise UsageError(
            f"database URL {mask(url)!r} names {url.drivername}, a dialect SQLAlchemy "
            f"{_sqlalchemy_version()} does not have (psycopg 3 needs SQLAlchemy 2.0): use "
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
    # Not set(password=None): SQLAlchemy's set() takes None as "unchanged".
    plain = url.set(drivername="postgresql")._replace(password=None)
    return plain.render_as_string(hide_password=False)
