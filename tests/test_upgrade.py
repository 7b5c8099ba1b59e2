"""runner.upgrade.step_error: one meaning of a failed step for both frameworks (no database)."""

from __future__ import annotations

import pytest

from runner.errors import ExitCode, InterruptedRunError
from runner.frameworks.base import Step
from runner.upgrade import step_error

CAUGHT = {"message": "canceling statement due to lock timeout", "sqlstate": "55P03",
          "file": "/app/versions/r2.py", "line": 12, "detail": None, "hint": None}


def _step(**fields: object) -> Step:
    step = Step(id="r2", title="", previous="r1", path="/app/versions/r2.py")
    step.error = dict(CAUGHT)
    for name, value in fields.items():
        setattr(step, name, value)
    return step


def test_a_step_that_committed_part_of_itself_is_a_partial_apply() -> None:
    step = _step(partial=True)
    error = step_error(step, RuntimeError("x"), interrupted=True, connection_lost=True)
    assert error.exit_code == ExitCode.PARTIAL_APPLY and step.outcome == "partial"
    assert "migration r2 (/app/versions/r2.py:12) failed after committing part" in error.message


@pytest.mark.parametrize("interrupted, exc", [(True, RuntimeError("x")),
                                              (False, InterruptedRunError("signal"))])
def test_an_interrupted_step_was_rolled_back(interrupted: bool, exc: BaseException) -> None:
    step = _step()
    error = step_error(step, exc, interrupted=interrupted, connection_lost=True)
    assert error.exit_code == ExitCode.INTERRUPTED and step.outcome == "interrupted"


def test_a_lost_connection_is_retry_safe() -> None:
    error = step_error(_step(), RuntimeError("x"), interrupted=False, connection_lost=True)
    assert error.exit_code == ExitCode.UNREACHABLE
    assert "SQLSTATE 55P03: canceling statement" in error.message


def test_a_failed_step_names_what_blocked_it() -> None:
    step = _step(blockers=[{"pid": 42, "application_name": "web", "query": "SELECT 1"},
                           {"pid": 43, "query": "VACUUM"}])
    error = step_error(step, RuntimeError("x"), interrupted=False, connection_lost=False)
    assert error.exit_code == ExitCode.MIGRATION_FAILED
    assert error.message.endswith("; blocked by pid 42 (web: SELECT 1), pid 43 (?: VACUUM)")
    assert error.data["revision"] == "r2"


def test_without_a_line_the_step_is_located_by_its_file() -> None:
    step = _step()
    step.error = None  # nothing caught yet: read from the exception itself
    error = step_error(step, RuntimeError("boom"), interrupted=False, connection_lost=False)
    assert error.message.startswith("migration r2 (/app/versions/r2.py) failed and was "
                                    "rolled back (boom)")
