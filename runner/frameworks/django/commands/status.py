"""`safe-migrate status --framework django`: showmigrations, the lock, leftovers, last run."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import Settings

COMMON_OPTIONS = ("connect_timeout", "artifacts_dir", "ledger_table", "no_ledger")
EXAMPLE = """\
  safe-migrate status --framework django --settings mysite.settings --format json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["text", "json"], default="text")


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import inspect

    return inspect.status(settings, args)
