"""`safe-migrate upgrade --framework django [APP | APP:MIGRATION]`."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import Settings, add_model_changes_argument

COMMON_OPTIONS = ("embedded", "connect_timeout", "lock_timeout", "statement_timeout",
                  "lock_retries", "advisory_lock_wait", "artifacts_dir", "no_schema_diff",
                  "pg_dump", "ledger_table", "no_ledger")
EXAMPLE = """\
  DATABASE_URL=postgresql://app@db.internal/app safe-migrate upgrade --framework django \\
      --settings mysite.settings
  safe-migrate upgrade --framework django --settings mysite.settings shop:0003
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="heads",
                        help="APP or APP:MIGRATION (default: every app's latest)")
    add_model_changes_argument(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import upgrade

    return upgrade.run(settings, args)
