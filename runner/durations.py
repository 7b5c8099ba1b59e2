"""Durations as the SPEC writes them: `500ms`, `2s`, `1m`, or a bare number of seconds."""

from __future__ import annotations

import re

from runner.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str, *, flag: str = "duration") -> float:
    """Return seconds; raise UsageError (exit 2) on anything malformed or negative."""
    match = _PATTERN.match(text)
    if match is None:
        raise UsageError(f"{flag}: malformed duration {text!r} (use e.g. 500ms, 2s, 1m)")
    value, unit = match.groups()
    return float(value) * _UNITS[unit or "s"]


def to_postgres_ms(seconds: float) -> str:
    """Render seconds as a PostgreSQL duration setting (`0` disables the timeout)."""
    return f"{round(seconds * 1000)}ms"
