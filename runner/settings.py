"""Command-line options and their environment variables, turned into one typed Settings."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from runner.durations import parse_duration
from runner.errors import UsageError
from runner.urls import parse_url

ARTIFACTS_ROOT = Path("migration-artifacts")
LINT_MODES: tuple[str, ...] = ("error", "warn", "off")


@dataclass
class Settings:
    command: str
    config_file: Path
    ini_section: str
    x_args: list[str]
    database_url: URL | None
    embedded: bool
    lock_timeout: float
    statement_timeout: float
    lock_retries: int
    advisory_lock_wait: float
    connect_timeout: float
    artifacts_dir: Path
    schema_diff: bool
    pg_dump: str | None
    log_format: str
    debug: bool
    termination_log: Path
    target: str = "heads"
    ledger: bool = True
    ledger_table: str | None = None  # NAME or SCHEMA.NAME; default: safe_migrate_runs
    run_id: str = field(default_factory=lambda: new_run_id())
    # --artifacts-dir (always a parent: each run writes <root>/<run-id>/), where status and
    # recover look for past runs.
    artifacts_root: Path = ARTIFACTS_ROOT
    # The URL as the user gave it, driver included (+psycopg2, +asyncpg): what env.py gets as
    # sqlalchemy.url, so that migrations run on that driver as under bare alembic.
    # database_url is the same server normalized to psycopg 3, for the runner's own sessions.
    env_py_url: URL | None = None


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command; each has an environment variable (SPEC)."""
    add = parser.add_argument
    add("-c", "--config", default=_env("ALEMBIC_CONFIG", "alembic.ini"),
        help="alembic.ini path (env ALEMBIC_CONFIG; default ./alembic.ini)")
    add("-n", "--name", default=_env("SAFE_MIGRATE_NAME", "alembic"),
        help="section of the ini file (env SAFE_MIGRATE_NAME; default alembic)")
    add("-x", action="append", default=[], metavar="KEY=VALUE",
        help="passed to env.py, as alembic's -x")
    add("--database-url", default=None,
        help="overrides sqlalchemy.url (env DATABASE_URL, or DATABASE_URL_FILE for a file)")
    add("--embedded", action="store_true",
        default=_env("SAFE_MIGRATE_EMBEDDED", "") in ("1", "true"),
        help="run against a throwaway embedded PostgreSQL (env SAFE_MIGRATE_EMBEDDED=1)")
    add("--lock-timeout", default=_env("SAFE_MIGRATE_LOCK_TIMEOUT", "2s"),
        help="lock_timeout for every migration statement (default 2s)")
    add("--statement-timeout", default=_env("SAFE_MIGRATE_STATEMENT_TIMEOUT", "0"),
        help="statement_timeout for every migration statement (default 0 = none)")
    add("--lock-retries", default=_env("SAFE_MIGRATE_LOCK_RETRIES", "5"),
        help="retries of a migration that lost a lock race (default 5)")
    add("--advisory-lock-wait", default=_env("SAFE_MIGRATE_ADVISORY_LOCK_WAIT", "60s"),
        help="how long to wait for another runner (default 60s; 0 = fail at once)")
    add("--connect-timeout", default=_env("SAFE_MIGRATE_CONNECT_TIMEOUT", "10s"),
        help="how long to retry an unreachable database (default 10s)")
    add("--artifacts-dir", default=_env("SAFE_MIGRATE_ARTIFACTS_DIR"),
        help="parent of the runs' artifacts: each run writes DIR/<run-id>/ "
             "(default ./migration-artifacts)")
    add("--ledger-table", default=_env("SAFE_MIGRATE_LEDGER_TABLE"), metavar="[SCHEMA.]NAME",
        help="the run ledger in the database (default safe_migrate_runs, in the version "
             "table's schema)")
    add("--no-ledger", action="store_true",
        default=_env("SAFE_MIGRATE_NO_LEDGER", "") in ("1", "true"),
        help="keep no run ledger in the database: recovery then relies on the local "
             "artifacts, and a failed run does not block the next (env SAFE_MIGRATE_NO_LEDGER=1)")
    add("--no-schema-diff", action="store_true",
        default=_env("SAFE_MIGRATE_NO_SCHEMA_DIFF", "") in ("1", "true"),
        help="skip the pg_dump snapshots (env SAFE_MIGRATE_NO_SCHEMA_DIFF=1)")
    add("--pg-dump", default=_env("SAFE_MIGRATE_PG_DUMP"), help="pg_dump to use")
    add("--log-format", choices=["json", "console", "auto"],
        default=_env("SAFE_MIGRATE_LOG_FORMAT", "auto"), help="default auto")
    add("--termination-log", default=_env("SAFE_MIGRATE_TERMINATION_LOG", "/dev/termination-log"),
        help="Kubernetes termination message file (written when writable)")
    add("--debug", action="store_true",
        default=_env("SAFE_MIGRATE_DEBUG", "") in ("1", "true"), help="show tracebacks")


def add_lint_argument(parser: argparse.ArgumentParser) -> None:
    """--lint, for the commands that lint the pending SQL (plan, upgrade)."""
    parser.add_argument("--lint", choices=list(LINT_MODES),
                        default=os.environ.get("SAFE_MIGRATE_LINT", "warn"),
                        help="squawk lint of the pending SQL: error refuses on any finding, "
                             "warn reports them, off skips (env SAFE_MIGRATE_LINT; default warn)")


def resolve_database_url(flag: str | None) -> URL | None:
    """--database-url, then DATABASE_URL, then DATABASE_URL_FILE; None: use alembic.ini/env.py."""
    text = database_url_text(flag)
    return parse_url(text) if text else None


def as_given(text: str | None) -> URL | None:
    """The URL with the user's driver (parse_url validated it first)."""
    return make_url(text.strip()) if text else None


def database_url_text(flag: str | None) -> str | None:
    text = flag or os.environ.get("DATABASE_URL")
    if not text and os.environ.get("DATABASE_URL_FILE"):
        path = Path(os.environ["DATABASE_URL_FILE"])
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"DATABASE_URL_FILE {path}: {exc.strerror}") from None
        if not text:
            raise UsageError(f"DATABASE_URL_FILE {path} is empty")
    return text or None


def _int(value: str, flag: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{flag}: expected a whole number, got {value!r}") from None
    if number < 0:
        raise UsageError(f"{flag}: must not be negative, got {number}")
    return number


def from_args(args: argparse.Namespace) -> Settings:
    run_id = new_run_id()
    url_text = database_url_text(args.database_url)
    root = Path(args.artifacts_dir) if args.artifacts_dir else ARTIFACTS_ROOT
    return Settings(
        command=args.command,
        config_file=Path(args.config),
        ini_section=args.name,
        x_args=list(args.x),
        database_url=parse_url(url_text) if url_text else None,
        env_py_url=as_given(url_text),
        embedded=args.embedded,
        lock_timeout=parse_duration(args.lock_timeout, flag="--lock-timeout"),
        statement_timeout=parse_duration(args.statement_timeout, flag="--statement-timeout"),
        lock_retries=_int(str(args.lock_retries), "--lock-retries"),
        advisory_lock_wait=parse_duration(args.advisory_lock_wait, flag="--advisory-lock-wait"),
        connect_timeout=parse_duration(args.connect_timeout, flag="--connect-timeout"),
        artifacts_dir=root / run_id,
        schema_diff=not args.no_schema_diff,
        pg_dump=args.pg_dump,
        log_format=args.log_format,
        debug=args.debug,
        termination_log=Path(args.termination_log),
        target=getattr(args, "target", None) or "heads",
        run_id=run_id,
        artifacts_root=root,
        ledger=not args.no_ledger,
        ledger_table=args.ledger_table,
    )
