"""The commands for --framework django: the same names, options and exit codes."""

from __future__ import annotations

import argparse
import os

from runner.errors import UsageError


def refuse_alembic_options(args: argparse.Namespace) -> None:
    """-c/-n/-x configure alembic's env.py: with Django they would be ignored, so refused."""
    given = [flag for flag, used in (
        ("-x", bool(getattr(args, "x", None))),
        ("-n/--name", getattr(args, "name", "alembic") != os.environ.get("SAFE_MIGRATE_NAME",
                                                                        "alembic")),
        ("-c/--config", getattr(args, "config", "alembic.ini") != os.environ.get(
            "ALEMBIC_CONFIG", "alembic.ini"))) if used]
    if given:
        raise UsageError(f"{', '.join(given)}: alembic's options, not used with --framework "
                         "django (the project is --settings MODULE)")
