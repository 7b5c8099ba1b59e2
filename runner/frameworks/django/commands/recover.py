"""`safe-migrate recover --framework django`."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import Settings, add_recover_arguments

COMMON_OPTIONS = ("connect_timeout", "lock_timeout", "lock_retries", "advisory_lock_wait",
                  "artifacts_dir", "ledger_table", "no_ledger")
EXAMPLE = """\
  safe-migrate recover --framework django --settings mysite.settings   # shows the plan
  safe-migrate recover --framework django --settings mysite.settings --execute --yes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recover_arguments(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import recover

    return recover.run(settings, args)
