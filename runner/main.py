"""Entry point: parse arguments, configure logging once, run a command, map errors to exit codes.

This is the only place that turns an exception into an exit code.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from runner import __version__
from runner import logging as runner_logging
from runner.artifacts import write_termination_log
from runner.errors import ExitCode, SafeMigrateError, UsageError, exit_code_table
from runner.settings import Settings, add_common_options, from_args
from runner.urls import mask_text

COMMANDS = {
    "upgrade": "Run pending migrations safely (the deploy job).",
    "plan": "Show what upgrade would check and do, without changing the database.",
    "status": "Read-only: revisions, lock holder, leftovers, last run.",
    "verify": "Prove the history on a scratch database (stairway up/down/up).",
    "recover": "Print (and with --execute, carry out) the recovery plan after a failed run.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2 with usage: raise instead
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(only: str | None = None, framework: str = "alembic") -> argparse.ArgumentParser:
    """The CLI's parser; with `only`, that command's options alone: the others stay listed in
    --help, but their modules (and what they import) are not loaded for nothing.

    Each command's module says which common options it reads (COMMON_OPTIONS), why it
    refuses some (REFUSED_OPTIONS), and shows an EXAMPLE in its --help."""
    parser = _Parser(prog="safe-migrate", description="Safe Alembic upgrades for PostgreSQL.",
                     epilog="Run `safe-migrate COMMAND --help` for a command's options.\n\n"
                            + exit_code_table(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"safe-migrate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        if only not in (None, name):
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = _module(name, framework)
        command_parser = sub.add_parser(
            name, help=help_text, description=help_text,
            epilog=f"example:\n{module.EXAMPLE.rstrip()}\n\n{exit_code_table()}",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command_parser)
        add_common_options(command_parser, module.COMMON_OPTIONS,
                           getattr(module, "REFUSED_OPTIONS", None))
    return parser


def _command_of(argv: list[str]) -> str | None:
    # The top-level parser has no options that take a value: the first word is the command.
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


#: The commands the Django adapter has (runner/frameworks/django/commands/).
DJANGO_COMMANDS = ("upgrade", "plan", "status", "verify", "recover")


def _module(name: str, framework: str = "alembic") -> Any:
    """The command's module; Django's own under runner.frameworks.django, imported only for
    --framework django, so that neither path imports the other's framework."""
    if framework == "django":
        if name not in DJANGO_COMMANDS:
            raise UsageError(f"`safe-migrate {name} --framework django` is not available yet "
                             f"(Django has: {', '.join(DJANGO_COMMANDS)})")
        return importlib.import_module(f"runner.frameworks.django.commands.{name}")
    return importlib.import_module(f"runner.frameworks.alembic.commands.{name}")


def _peek_framework(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--framework" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--framework="):
            return arg.split("=", 1)[1]
    return os.environ.get("SAFE_MIGRATE_FRAMEWORK", "alembic")


def main(argv: Sequence[str] | None = None, *, configure_logging: bool = True) -> int:
    """The CLI. configure_logging=False leaves structlog as the caller set it up (tests use
    structlog.testing.capture_logs()).

    Without `argv` it runs this process's own command line, and the process ends when it
    returns: what is still alive is frozen for the garbage collector (see below).
    """
    code = _run(list(sys.argv[1:] if argv is None else argv), configure_logging)
    if argv is None:
        # The interpreter's shutdown runs a full collection over every object still alive,
        # the libraries and every revision module alembic imported included: 0.1-0.3 s
        # measured (benchmarks/), as much as status's own work. Frozen objects are skipped;
        # atexit handlers, log flushes and finalizers still run.
        gc.freeze()
    return code


def _run(args_list: list[str], configure_logging: bool) -> int:
    if not args_list:  # what a newcomer types first: the commands and the exit codes
        print(build_parser().format_help(), end="", file=sys.stderr)
        return int(ExitCode.USAGE)
    debug = "--debug" in args_list
    if configure_logging:
        runner_logging.configure(_peek_log_format(args_list))  # type: ignore[arg-type]
    settings: Settings | None = None
    try:
        framework = _peek_framework(args_list)
        args, extra = build_parser(_command_of(args_list),
                                   framework).parse_known_args(args_list)
        if extra:  # argparse would blame the top-level parser: name the command's help
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} "
                             f"(see `safe-migrate {args.command} --help`)")
        settings = from_args(args)
        if configure_logging:
            runner_logging.configure(settings.log_format)  # type: ignore[arg-type]
        return int(_module(settings.command, settings.framework).run(settings, args))
    except SafeMigrateError as exc:
        return _report(exc, exc.exit_code, debug, settings, args_list)
    except KeyboardInterrupt:
        return _report(None, ExitCode.INTERRUPTED, debug, settings, args_list, "interrupted")
    except Exception as exc:  # noqa: BLE001 - a bug: say so, in one line unless --debug
        return _report(exc, ExitCode.INTERNAL, debug, settings, args_list,
                       f"internal error (a bug, please report it): {type(exc).__name__}: {exc}")


def _peek_log_format(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1] if argv[i + 1] in ("json", "console", "auto") else "auto"
        if arg.startswith("--log-format="):
            value = arg.split("=", 1)[1]
            return value if value in ("json", "console", "auto") else "auto"
    value = os.environ.get("SAFE_MIGRATE_LOG_FORMAT", "auto")
    return value if value in ("json", "console", "auto") else "auto"


def _report(exc: BaseException | None, code: ExitCode, debug: bool, settings: Settings | None,
            argv: list[str], message: str | None = None) -> int:
    text = mask_text(message or (exc.message if isinstance(exc, SafeMigrateError) else str(exc)))
    text = " ".join(text.split())  # one line, always
    fmt = settings.log_format if settings else _peek_log_format(argv)
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        record: dict[str, Any] = {"event": "error", "level": "error", "exit_code": int(code),
                                  "message": text}
        if settings is not None:
            record["run_id"] = settings.run_id
        print(json.dumps(record), file=sys.stderr)
    else:
        print(f"safe-migrate: error: {text} (exit {int(code)})", file=sys.stderr)
    if settings is not None:
        # The job writes its own summary; this is for what failed before it ran (a bad
        # history, an env.py that cannot connect...), which Kubernetes would show as nothing.
        write_termination_log(settings.termination_log,
                              f"safe-migrate {settings.command} failed: exit {int(code)}; {text}")
    if debug and exc is not None:
        traceback.print_exception(exc)
    return int(code)
