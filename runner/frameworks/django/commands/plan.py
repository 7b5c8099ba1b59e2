"""`safe-migrate plan --framework django [APP | APP:MIGRATION]`."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import (
    Settings,
    add_lint_argument,
    add_model_changes_argument,
    check_lint_arguments,
)

COMMON_OPTIONS = ("connect_timeout", "artifacts_dir", "ledger_table", "no_ledger")
EXAMPLE = """\
  safe-migrate plan --framework django --settings mysite.settings
  safe-migrate plan --framework django --settings mysite.settings --format json shop
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="heads",
                        help="APP or APP:MIGRATION (default: every app's latest)")
    add_model_changes_argument(parser)
    parser.add_argument("--format", dest="output_format", choices=["text", "json"],
                        default="text", help="output format (default text)")
    add_lint_argument(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import inspect

    check_lint_arguments(args)
    return inspect.plan(settings, args)
