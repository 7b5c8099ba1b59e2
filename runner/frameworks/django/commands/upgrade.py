"""`safe-migrate upgrade --framework django [APP | APP:MIGRATION]`."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import (
    Settings,
    add_lint_argument,
    add_model_changes_argument,
    check_lint_arguments,
)

COMMON_OPTIONS = ("embedded", "connect_timeout", "lock_timeout", "statement_timeout",
                  "lock_retries", "advisory_lock_wait", "artifacts_dir", "no_schema_diff",
                  "pg_dump", "ledger_table", "no_ledger")
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate upgrade --framework django \\
      --settings mysite.settings
  safe-migrate upgrade --framework django --settings mysite.settings shop:0003
  safe-migrate upgrade --framework django --settings mysite.settings --lint error
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="heads",
                        help="APP or APP:MIGRATION (default: every app's latest)")
    add_model_changes_argument(parser)
    add_lint_argument(parser)  # --lint error|warn|off (default warn), --lint-rules


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    check_lint_arguments(args)
    from runner.frameworks.django import upgrade

    return upgrade.run(settings, args)
