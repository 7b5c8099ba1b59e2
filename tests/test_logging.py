"""runner.logging: the configured processors, as they run on every event."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from runner import logging as runner_logging


@pytest.fixture
def json_output() -> Iterator[io.StringIO]:
    """Events rendered by the real configuration (not capture_logs), into a buffer."""
    saved = structlog.get_config()
    stream = io.StringIO()
    runner_logging.configure("json", stream=stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)


def test_secrets_are_masked_in_nested_values(json_output: io.StringIO) -> None:
    blockers = [{"pid": 7, "query": "SELECT dblink('host=h password=Secret9 dbname=x')"},
                {"pid": 8, "query": "-- postgresql://app:Secret9@db/prod"}]
    runner_logging.get_logger().warning(
        "migration.retry", blockers=blockers, detail={"urls": ("postgresql://u:Secret9@h/d",)},
        error="password=Secret9")
    line = json_output.getvalue()
    assert "Secret9" not in line
    event = json.loads(line)
    assert event["blockers"][0] == {
        "pid": 7, "query": "SELECT dblink('host=h password=*** dbname=x')"}
    assert event["blockers"][1]["query"] == "-- postgresql://app:***@db/prod"
    assert event["detail"] == {"urls": ["postgresql://u:***@h/d"]}
    assert "Secret9" in blockers[0]["query"]  # the caller's own data is left alone
