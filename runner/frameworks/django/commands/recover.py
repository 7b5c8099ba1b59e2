"""`safe-migrate recover --framework django`."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import Settings

COMMON_OPTIONS = ("connect_timeout", "lock_timeout", "lock_retries", "advisory_lock_wait",
                  "artifacts_dir", "ledger_table", "no_ledger")
EXAMPLE = """\
  safe-migrate recover --framework django --settings mysite.settings   # shows the plan
  safe-migrate recover --framework django --settings mysite.settings --execute --yes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--execute", action="store_true",
                        help="carry the plan out (after showing it), under the advisory lock")
    parser.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (non-interactive use)")
    parser.add_argument("--mark-resolved", action="store_true",
                        help="record that the last unresolved failure was fixed by hand")
    parser.add_argument("--note", help="with --mark-resolved: what was done (kept in the ledger)")
    parser.add_argument("--format", choices=["text", "json"], default="text")


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import recover

    return recover.run(settings, args)
