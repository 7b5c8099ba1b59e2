"""`safe-migrate verify --framework django`: the stairway on a scratch database."""

from __future__ import annotations

import argparse

from runner.frameworks.django.commands import refuse_alembic_options
from runner.settings import Settings

COMMON_OPTIONS = ("embedded", "connect_timeout")
EXAMPLE = """\
  safe-migrate verify --framework django --settings mysite.settings   # embedded PostgreSQL
  safe-migrate verify --framework django --settings mysite.settings \\
      --database-url postgresql://postgres@127.0.0.1/postgres        # a scratch db there
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch database (and embedded server) afterwards")


def run(settings: Settings, args: argparse.Namespace) -> int:
    refuse_alembic_options(args)
    from runner.frameworks.django import verify

    return verify.run(settings, args)
