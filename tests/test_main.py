"""The CLI entry point: parsing, and what start-up loads (no database)."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from runner.durations import parse_duration
from runner.errors import MEANINGS, RETRY_SAFE, ExitCode, UsageError
from runner.main import COMMANDS, build_parser, main
from runner.settings import ALWAYS, from_args

_LOADED = """
import sys
from runner.main import build_parser, _command_of
build_parser(_command_of(sys.argv[1:])).parse_args(sys.argv[1:])
PREFIX = "runner.frameworks.alembic.commands."
print(",".join(sorted(m.split(".")[-1] for m in sys.modules if m.startswith(PREFIX))))
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


# -- help that teaches ---------------------------------------------------------------------------

def _help(command: str) -> str:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def _shown_options(command: str) -> set[str]:
    """The common options a command's --help lists, by dest."""
    text = _help(command).split("\nexample:")[0]
    return {dest for dest, flag in _COMMON_FLAGS.items() if f" {flag}" in text}


_COMMON_FLAGS = {
    "config": "--config", "name": "--name", "x": "-x KEY=VALUE", "database_url": "--database-url",
    "embedded": "--embedded", "connect_timeout": "--connect-timeout",
    "lock_timeout": "--lock-timeout", "statement_timeout": "--statement-timeout",
    "lock_retries": "--lock-retries", "advisory_lock_wait": "--advisory-lock-wait",
    "artifacts_dir": "--artifacts-dir", "no_schema_diff": "--no-schema-diff",
    "pg_dump": "--pg-dump", "log_format": "--log-format", "termination_log": "--termination-log",
    "debug": "--debug", "ledger_table": "--ledger-table", "no_ledger": "--no-ledger",
    "framework": "--framework alembic|django", "settings": "--settings MODULE",
    "database": "--database ALIAS",
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_s_help_lists_only_the_options_it_reads(command):
    module = importlib.import_module(f"runner.frameworks.alembic.commands.{command}")
    assert _shown_options(command) == set(ALWAYS) | set(module.COMMON_OPTIONS)


def test_status_help_is_grouped_with_an_example_and_the_exit_codes():
    text = _help("status")
    assert "--lock-retries" not in text and "--lock-timeout" not in text
    assert "--no-schema-diff" not in text and "--pg-dump" not in text
    for group in ("database:", "artifacts:", "output:"):
        assert f"\n{group}\n" in text
    assert "\nsafety/timeouts:\n" not in text  # status takes no lock and runs nothing
    assert "example:\n  " in text and "safe-migrate status" in text.split("example:")[1]
    for code in ExitCode:
        mark = "*" if code in RETRY_SAFE else " "
        assert f"\n  {int(code)}{mark} {MEANINGS[code]}\n" in text + "\n"


def test_upgrade_help_groups_the_safety_options_and_states_duration_units():
    text = _help("upgrade")
    safety = text.split("\nsafety/timeouts:\n")[1].split("\n\n")[0]
    for flag in ("--lock-timeout", "--statement-timeout", "--lock-retries",
                 "--advisory-lock-wait"):
        assert flag in safety
    assert " ".join(safety.split()).count("a duration with its unit") == 3  # retries: a count


def test_safe_migrate_alone_prints_usage_and_exits_2(capsys):
    assert main([], configure_logging=False) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: safe-migrate")
    assert all(name in err for name in COMMANDS) and "exit codes" in err


def _error_of(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines) == 1, lines
    record: dict[str, object] = json.loads(lines[0])
    return record


@pytest.mark.parametrize(("argv", "needle"), [
    (["status", "--lock-retries", "3"], "--lock-retries is not an option of `safe-migrate status`"),
    (["plan", "--artifacts-dir", "x"], "--artifacts-dir is not an option of `safe-migrate plan`"),
    (["recover", "--embedded"], "nothing to recover"),
    (["upgrade", "--lock-timeout", "2"], "add one, e.g. 2s or 2000ms"),
    (["upgrade", "--advisory-lock-wait", "1.5"], "1.5s or 1500ms"),
])
def test_an_option_a_command_does_not_use_or_a_bare_duration_is_refused(argv, needle, capsys,
                                                                         tmp_path):
    # Refused while parsing: before any file is read or any database is reached.
    argv = [*argv, "-c", str(tmp_path / "missing.ini"), "--log-format", "json",
            "--termination-log", str(tmp_path / "t")]
    assert main(argv, configure_logging=False) == 2
    record = _error_of(capsys)
    assert needle in str(record["message"]) and record["exit_code"] == 2


def test_a_bad_flag_points_at_the_command_s_help(capsys, tmp_path):
    assert main(["status", "--frobnicate", "--log-format", "json"], configure_logging=False) == 2
    assert "see `safe-migrate status --help`" in str(_error_of(capsys)["message"])


def test_environment_variables_still_set_the_options_of_the_commands_that_use_them(monkeypatch):
    monkeypatch.setenv("SAFE_MIGRATE_LOCK_TIMEOUT", "750ms")
    monkeypatch.setenv("SAFE_MIGRATE_NO_SCHEMA_DIFF", "1")
    monkeypatch.setenv("SAFE_MIGRATE_ARTIFACTS_DIR", "elsewhere")
    upgrade = from_args(build_parser("upgrade").parse_args(["upgrade"]))
    assert upgrade.lock_timeout == 0.75 and not upgrade.schema_diff
    assert str(upgrade.artifacts_root) == "elsewhere"
    # status has no lock timeout: its variable is not its concern (defaults apply)
    monkeypatch.setenv("SAFE_MIGRATE_LOCK_TIMEOUT", "not-a-duration")
    status = from_args(build_parser("status").parse_args(["status"]))
    assert status.lock_timeout == 2.0 and str(status.artifacts_root) == "elsewhere"


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("0.0", 0.0), ("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0),
    ("1h", 3600.0), (" 2 s ", 2.0),
])
def test_durations_with_a_unit_or_zero(text, seconds):
    assert parse_duration(text, flag="--x") == seconds


@pytest.mark.parametrize(("text", "needle"), [
    ("2", "--x: '2' has no unit: add one, e.g. 2s or 2000ms"),
    ("0.25", "0.25s or 250ms"),
    ("5x", "malformed duration"),
    ("-1s", "malformed duration"),
])
def test_durations_without_a_unit_are_refused(text, needle):
    with pytest.raises(UsageError) as info:
        parse_duration(text, flag="--x")
    assert needle in info.value.message and info.value.exit_code == 2
