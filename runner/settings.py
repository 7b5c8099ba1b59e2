"""Command-line options and their environment variables, turned into one typed Settings."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL

from runner.durations import parse_duration
from runner.errors import UsageError
from runner.urls import parse_url

ARTIFACTS_ROOT = Path("migration-artifacts")
LINT_MODES: tuple[str, ...] = ("error", "warn", "off")
LINT_RULE_SETS: tuple[str, ...] = ("safety", "all")  # all: squawk's style rules too


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
    run_id: str = field(default_factory=lambda: new_run_id())
    # Where status/recover look for past runs: --artifacts-dir as given, else the default root.
    artifacts_root: Path = ARTIFACTS_ROOT


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
        help="where artifacts go (default ./migration-artifacts/<run-id>/)")
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
    parser.add_argument("--lint-rules", choices=list(LINT_RULE_SETS),
                        default=os.environ.get("SAFE_MIGRATE_LINT_RULES", "safety"),
                        help="squawk rules: safety (locks and safety; default) or all (its "
                             "style rules too); a .squawk.toml's excluded_rules decide over "
                             "both (env SAFE_MIGRATE_LINT_RULES)")


def check_lint_arguments(args: argparse.Namespace) -> None:
    """argparse does not check an environment variable's default: exit 2 here instead."""
    for flag, value, allowed in (("--lint", args.lint, LINT_MODES),
                                 ("--lint-rules", args.lint_rules, LINT_RULE_SETS)):
        if value not in allowed:
            raise UsageError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")


def resolve_database_url(flag: str | None) -> URL | None:
    """--database-url, then DATABASE_URL, then DATABASE_URL_FILE; None: use alembic.ini/env.py."""
    text = flag or os.environ.get("DATABASE_URL")
    if not text and os.environ.get("DATABASE_URL_FILE"):
        path = Path(os.environ["DATABASE_URL_FILE"])
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"DATABASE_URL_FILE {path}: {exc.strerror}") from None
        if not text:
            raise UsageError(f"DATABASE_URL_FILE {path} is empty")
    return parse_url(text) if text else None


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
    given = Path(args.artifacts_dir) if args.artifacts_dir else None
    return Settings(
        command=args.command,
        config_file=Path(args.config),
        ini_section=args.name,
        x_args=list(args.x),
        database_url=resolve_database_url(args.database_url),
        embedded=args.embedded,
        lock_timeout=parse_duration(args.lock_timeout, flag="--lock-timeout"),
        statement_timeout=parse_duration(args.statement_timeout, flag="--statement-timeout"),
        lock_retries=_int(str(args.lock_retries), "--lock-retries"),
        advisory_lock_wait=parse_duration(args.advisory_lock_wait, flag="--advisory-lock-wait"),
        connect_timeout=parse_duration(args.connect_timeout, flag="--connect-timeout"),
        artifacts_dir=given or ARTIFACTS_ROOT / run_id,
        schema_diff=not args.no_schema_diff,
        pg_dump=args.pg_dump,
        log_format=args.log_format,
        debug=args.debug,
        termination_log=Path(args.termination_log),
        target=getattr(args, "target", None) or "heads",
        run_id=run_id,
        artifacts_root=given or ARTIFACTS_ROOT,
    )
