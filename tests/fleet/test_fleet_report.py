"""The fleet's exit-code rule, the scheduler's stages, and the console's per-target lines."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from runner.console import ConsoleRenderer
from runner.errors import ExitCode
from runner.fleet.pool import BY_INTERRUPT, Inline, Policy, schedule
from runner.fleet.report import SEVERITY, overall_code


def results(*codes: int | None, outcome: str = "x") -> list[dict[str, Any]]:
    return [{"exit_code": c, "outcome": "not-started" if c is None else outcome}
            for c in codes]


@pytest.mark.parametrize(("codes", "expected"), [
    ((0, 0), 0), ((0, 4, 8), 4), ((7, 4), 7), ((8, 5, 7), 5), ((3, 5), 5), ((6, 5, 1), 1),
    ((2, 7), 2), ((5, None), 5), ((), 0),
])
def test_the_most_severe_code_wins(codes: tuple[int | None, ...], expected: int) -> None:
    assert overall_code(results(*codes), None) == expected


def test_unstarted_by_sigterm_count_as_interrupted() -> None:
    assert overall_code(results(0, None), BY_INTERRUPT) == ExitCode.INTERRUPTED
    assert overall_code(results(0, None), "max-failures") == ExitCode.OK  # cannot happen alone
    assert set(SEVERITY) == set(ExitCode) - {ExitCode.OK}


def run_schedule(codes: list[int], policy: Policy) -> tuple[list[int], str | None, list[int]]:
    started: list[int] = []

    def run(index: int, _: threading.Event) -> dict[str, Any]:
        started.append(index)
        return {"exit_code": codes[index], "outcome": "x"}

    done, stopped = schedule(len(codes), Inline(run, threading.Event()), policy,
                             threading.Event(), lambda i, r: None)
    return started, stopped, [i for i, r in done.items() if r["outcome"] == "not-started"]


def test_canary_then_the_rest() -> None:
    assert run_schedule([0, 0, 0, 5, 0], Policy(canary=2)) == ([0, 1, 2, 3, 4], None, [])
    assert run_schedule([0, 5, 0, 0, 0], Policy(canary=3)) == ([0, 1, 2], "canary-failed",
                                                               [3, 4])


def test_max_failures() -> None:
    assert run_schedule([5, 0, 4, 0, 0], Policy(max_failures=2)) == ([0, 1, 2],
                                                                     "max-failures", [3, 4])


def test_console_lines_name_their_target() -> None:
    stream = io.StringIO()
    renderer = ConsoleRenderer(stream)
    line = renderer(None, "info", {"event": "migration.done", "revision": "r1",
                                   "duration_ms": 5, "fleet_target": "acme"})
    assert all(part.startswith("[acme] ") for part in line.splitlines())
    assert "fleet_target" not in line
