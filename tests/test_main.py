"""The CLI entry point: parsing, and what start-up loads (no database)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.main import COMMANDS, build_parser

_LOADED = """
import sys
from runner.main import build_parser, _command_of
build_parser(_command_of(sys.argv[1:])).parse_args(sys.argv[1:])
print(",".join(sorted(m.split(".")[-1] for m in sys.modules if m.startswith("runner.commands."))))
"""


def _commands_loaded(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _LOADED, *argv], capture_output=True, text=True,
                         check=True).stdout.strip()
    return set(out.split(",")) - {""}


def test_start_up_loads_only_the_command_that_runs():
    assert _commands_loaded("status", "-c", "alembic.ini") == {"status"}
    assert _commands_loaded("upgrade", "--lint", "off") == {"upgrade"}


def test_the_full_parser_still_knows_every_command_s_options():
    parser = build_parser()
    for name in COMMANDS:
        args = parser.parse_args([name, "-c", "x.ini"])
        assert args.command == name and args.config == "x.ini"
    assert parser.parse_args(["plan", "--lint", "off"]).lint == "off"
    assert parser.parse_args(["upgrade", "--lint", "error"]).lint == "error"


def test_help_lists_every_command_even_when_built_for_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser("upgrade").parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


_FREEZE = """
import gc, sys
from runner.main import main
before = gc.get_freeze_count()
code = main(sys.argv[2:]) if sys.argv[1] == "--as-a-call" else main()
print(code, before, gc.get_freeze_count())
"""


def _freeze_counts(*argv: str) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", _FREEZE, *argv], capture_output=True, text=True,
                         check=True).stdout.split()
    code, before, after = (int(word) for word in out)
    return code, before, after


def test_the_process_s_own_command_line_freezes_what_is_alive_before_shutdown(tmp_path):
    # Exit 2 (no such alembic.ini) still returns through main(): the freeze is on every exit.
    code, before, after = _freeze_counts("status", "-c", str(tmp_path / "missing.ini"))
    assert (code, before) == (2, 0) and after > 0


def test_a_call_with_argv_leaves_the_collector_alone(tmp_path):
    # Tests and other callers go on living after main() returns: nothing of theirs is frozen.
    code, before, after = _freeze_counts("--as-a-call", "status", "-c",
                                         str(tmp_path / "missing.ini"))
    assert code == 2 and after == before == 0
