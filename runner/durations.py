"""Durations as the SPEC writes them: `500ms`, `2s`, `1m`, `1h`; `0` alone needs no unit.

A bare number is refused: PostgreSQL's own `lock_timeout = 2` means 2 ms, ours used to mean
2 s, and a reader of a manifest cannot tell which one its author had in mind.
"""

from __future__ import annotations

import re

from runner.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
#: For help texts: what a duration looks like.
DURATION_HELP = "a duration with its unit: 500ms, 2s, 1m"


def parse_duration(text: str, *, flag: str = "duration") -> float:
    """Return seconds; raise UsageError (exit 2) on anything malformed, negative or unitless
    (except 0, which needs no unit: none / at once)."""
    match = _PATTERN.match(text)
    if match is None:
        raise UsageError(f"{flag}: malformed duration {text!r} (use e.g. 500ms, 2s, 1m)")
    value, unit = match.groups()
    if unit is None:
        if float(value) == 0:
            return 0.0
        raise UsageError(f"{flag}: {text.strip()!r} has no unit: add one, e.g. "
                         f"{value}s or {_as_ms(value)}ms")
    return float(value) * _UNITS[unit]


def _as_ms(value: str) -> str:
    ms = float(value) * 1000
    return str(int(ms)) if ms.is_integer() else f"{ms:g}"


def to_postgres_ms(seconds: float) -> str:
    """Render seconds as a PostgreSQL duration setting (`0` disables the timeout)."""
    return f"{round(seconds * 1000)}ms"
