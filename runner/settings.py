"""Command-line options and their environment variables, turned into one typed Settings."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.durations import DURATION_HELP, parse_duration
from runner.errors import UsageError
from runner.urls import check_dialect, parse_pg_url, parse_url

if TYPE_CHECKING:  # --framework django runs without importing SQLAlchemy
    from sqlalchemy.engine import URL

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
    # --framework django: the settings module (None: DJANGO_SETTINGS_MODULE) and the alias.
    framework: str = "alembic"
    django_settings: str | None = None
    database_alias: str = "default"


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


# Help groups of the common options, in the order --help shows them.
DATABASE, SAFETY, ARTIFACTS, OUTPUT = "database", "safety/timeouts", "artifacts", "output"
#: Options every command uses (the rest, each command names in its module's COMMON_OPTIONS).
ALWAYS: tuple[str, ...] = ("config", "name", "x", "database_url", "log_format",
                           "termination_log", "debug", "framework", "settings", "database")
FRAMEWORKS: tuple[str, ...] = ("alembic", "django")


class _NotFor(argparse.Action):
    """A common option this command does not use: refused with a reason, never ignored
    (`status --embedded` used to report on the real database)."""

    def __init__(self, option_strings: list[str], dest: str, reason: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.reason = reason

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        raise UsageError(f"{option_string} is not an option of `{parser.prog}`: {self.reason}")


def add_common_options(parser: argparse.ArgumentParser, uses: Collection[str] | None = None,
                       refused: Mapping[str, str] | None = None) -> None:
    """The options shared by the commands, each with its environment variable (SPEC).

    `uses`: the ones this command reads (None: all); the others are hidden from its --help
    and refused when given (with `refused`'s reason for that option, if any); their
    environment variables are ignored, and Settings gets their built-in defaults.
    """
    groups = {title: parser.add_argument_group(title)
              for title in (DATABASE, SAFETY, ARTIFACTS, OUTPUT)}

    def add(group: str, *flags: str, env: str | None = None, default: Any = None,
            **kwargs: Any) -> None:
        dest = flags[-1].lstrip("-").replace("-", "_")
        if uses is None or dest in uses or dest in ALWAYS:
            if env is not None:
                value = os.environ.get(env)
                if kwargs.get("action") == "store_true":
                    default = value in ("1", "true") if value is not None else default
                elif value is not None:
                    default = value
            groups[group].add_argument(*flags, default=default, **kwargs)
            return
        reason = (refused or {}).get(dest, f"it does not use it (see `{parser.prog} --help`)")
        parser.add_argument(*flags, action=_NotFor, reason=reason, default=default,
                            nargs=0 if kwargs.get("action") == "store_true" else None,
                            help=argparse.SUPPRESS)

    add(DATABASE, "-c", "--config", env="ALEMBIC_CONFIG", default="alembic.ini",
        help="alembic.ini path (env ALEMBIC_CONFIG; default ./alembic.ini)")
    add(DATABASE, "-n", "--name", env="SAFE_MIGRATE_NAME", default="alembic",
        help="section of the ini file (env SAFE_MIGRATE_NAME; default alembic)")
    add(DATABASE, "--framework", env="SAFE_MIGRATE_FRAMEWORK", default="alembic",
        metavar="alembic|django",
        help="the project's migration framework (env SAFE_MIGRATE_FRAMEWORK; default alembic)")
    add(DATABASE, "--settings", env="DJANGO_SETTINGS_MODULE", metavar="MODULE",
        help="Django: the settings module (env DJANGO_SETTINGS_MODULE)")
    add(DATABASE, "--database", env="SAFE_MIGRATE_DATABASE", default="default", metavar="ALIAS",
        help="Django: the DATABASES alias to migrate (default: default); --database-url "
             "overrides its connection")
    add(DATABASE, "-x", action="append", default=[], metavar="KEY=VALUE",
        help="passed to env.py, as alembic's -x")
    add(DATABASE, "--database-url", metavar="URL",
        help="overrides sqlalchemy.url (env DATABASE_URL, or DATABASE_URL_FILE for a file)")
    add(DATABASE, "--embedded", action="store_true", env="SAFE_MIGRATE_EMBEDDED", default=False,
        help="run against a throwaway embedded PostgreSQL (env SAFE_MIGRATE_EMBEDDED=1; "
             "needs `pip install 'safe-migrate[embedded]'`)")
    add(DATABASE, "--connect-timeout", env="SAFE_MIGRATE_CONNECT_TIMEOUT", default="10s",
        metavar="DURATION",
        help=f"how long to retry an unreachable database ({DURATION_HELP}; default 10s)")
    add(SAFETY, "--lock-timeout", env="SAFE_MIGRATE_LOCK_TIMEOUT", default="2s",
        metavar="DURATION",
        help=f"lock_timeout for every migration statement ({DURATION_HELP}; default 2s)")
    add(SAFETY, "--statement-timeout", env="SAFE_MIGRATE_STATEMENT_TIMEOUT", default="0",
        metavar="DURATION",
        help=f"statement_timeout for every migration statement ({DURATION_HELP}; "
             "default 0 = none)")
    add(SAFETY, "--lock-retries", env="SAFE_MIGRATE_LOCK_RETRIES", default="5", metavar="N",
        help="retries of a migration that lost a lock race (a count; default 5)")
    add(SAFETY, "--advisory-lock-wait", env="SAFE_MIGRATE_ADVISORY_LOCK_WAIT", default="60s",
        metavar="DURATION",
        help=f"how long to wait for another runner ({DURATION_HELP}; default 60s; "
             "0 = fail at once)")
    add(ARTIFACTS, "--artifacts-dir", env="SAFE_MIGRATE_ARTIFACTS_DIR", metavar="DIR",
        help="parent of the runs' artifacts: each run writes DIR/<run-id>/ "
             "(default ./migration-artifacts)")
    add(ARTIFACTS, "--ledger-table", env="SAFE_MIGRATE_LEDGER_TABLE", metavar="[SCHEMA.]NAME",
        help="the run ledger in the database (default safe_migrate_runs, in the version "
             "table's schema)")
    add(ARTIFACTS, "--no-ledger", action="store_true", env="SAFE_MIGRATE_NO_LEDGER",
        default=False,
        help="keep no run ledger in the database: recovery then relies on the local "
             "artifacts, and a failed run does not block the next (env SAFE_MIGRATE_NO_LEDGER=1)")
    add(ARTIFACTS, "--no-schema-diff", action="store_true", env="SAFE_MIGRATE_NO_SCHEMA_DIFF",
        default=False, help="skip the pg_dump snapshots (env SAFE_MIGRATE_NO_SCHEMA_DIFF=1)")
    add(ARTIFACTS, "--pg-dump", env="SAFE_MIGRATE_PG_DUMP", metavar="PATH",
        help="pg_dump to use (env SAFE_MIGRATE_PG_DUMP)")
    add(OUTPUT, "--log-format", choices=["json", "console", "auto"],
        env="SAFE_MIGRATE_LOG_FORMAT", default="auto",
        help="events as JSON lines, or for people (default auto: console on a terminal)")
    add(OUTPUT, "--termination-log", env="SAFE_MIGRATE_TERMINATION_LOG",
        default="/dev/termination-log", metavar="PATH",
        help="Kubernetes termination message file (written when writable)")
    add(OUTPUT, "--debug", action="store_true", env="SAFE_MIGRATE_DEBUG", default=False,
        help="show tracebacks (env SAFE_MIGRATE_DEBUG=1)")


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


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    """recover's own flags, the same for every framework."""
    parser.add_argument("--execute", action="store_true",
                        help="carry the plan out (after showing it), under the advisory lock")
    parser.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (non-interactive use)")
    parser.add_argument("--mark-resolved", action="store_true",
                        help="record that the last unresolved failure was fixed by hand")
    parser.add_argument("--note", help="with --mark-resolved: what was done (kept in the ledger)")
    parser.add_argument("--format", choices=["text", "json"], default="text")


def add_model_changes_argument(parser: argparse.ArgumentParser) -> None:
    """--model-changes, for Django's upgrade and plan (`makemigrations --check`)."""
    parser.add_argument("--model-changes", choices=["error", "warn", "off"],
                        default=os.environ.get("SAFE_MIGRATE_MODEL_CHANGES", "warn"),
                        help="Django: models changed without a migration: error refuses "
                             "(exit 3), warn reports (env SAFE_MIGRATE_MODEL_CHANGES; "
                             "default warn)")


def check_lint_arguments(args: argparse.Namespace) -> None:
    """argparse does not check an environment variable's default: exit 2 here instead."""
    for flag, value, allowed in (("--lint", args.lint, LINT_MODES),
                                 ("--lint-rules", args.lint_rules, LINT_RULE_SETS)):
        if value not in allowed:
            raise UsageError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")


def resolve_database_url(flag: str | None) -> URL | None:
    """--database-url, then DATABASE_URL, then DATABASE_URL_FILE; None: use alembic.ini/env.py."""
    text = database_url_text(flag)
    return parse_url(text) if text else None


def as_given(text: str | None) -> URL | None:
    """The URL with the user's driver (parse_url validated it first)."""
    if not text:
        return None
    from sqlalchemy.engine import make_url

    url = make_url(text.strip())
    check_dialect(url)  # +psycopg on SQLAlchemy 1.4: exit 2 before anything runs
    return url


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
    framework = str(getattr(args, "framework", None) or "alembic")
    if framework not in FRAMEWORKS:
        raise UsageError(f"--framework: expected one of {', '.join(FRAMEWORKS)}, "
                         f"got {framework!r}")
    url_text = database_url_text(args.database_url)
    django = framework == "django"  # no env.py: the URL without SQLAlchemy
    root = Path(args.artifacts_dir) if args.artifacts_dir else ARTIFACTS_ROOT
    return Settings(
        command=args.command,
        config_file=Path(args.config),
        ini_section=args.name,
        x_args=list(args.x),
        database_url=(parse_pg_url if django else parse_url)(url_text) if url_text else None,
        env_py_url=None if django else as_given(url_text),
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
        framework=framework,
        django_settings=getattr(args, "settings", None),
        database_alias=getattr(args, "database", None) or "default",
    )
