"""Which revisions are not transactional: known before running them, from source and offline SQL.

A non-transactional revision commits part of its work mid-step, so a failure can leave a
partial apply behind; the runner snapshots the schema right before running one.
"""

from __future__ import annotations

import re

_SOURCE_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"autocommit_block\s*\("), "autocommit_block()"),
    (re.compile(r"""["']\s*COMMIT\s*;?\s*["']""", re.I), "raw COMMIT"),
    (re.compile(r"postgresql_concurrently\s*=\s*True"), "CREATE INDEX CONCURRENTLY"),
    (re.compile(r"\bCONCURRENTLY\b", re.I), "CONCURRENTLY"),
    (re.compile(r"\bVACUUM\b", re.I), "VACUUM"),
)
_SQL_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^\s*COMMIT\s*;", re.I | re.M), "COMMIT inside the step"),
    (re.compile(r"\bCONCURRENTLY\b", re.I), "CONCURRENTLY"),
)


def non_transactional_reasons(source: str, offline_sql: str | None = None) -> list[str]:
    """Reasons a revision is not (entirely) transactional; empty when it is.

    offline_sql is the revision's own `--sql` output without the BEGIN/COMMIT that
    wraps it, so any COMMIT in it is one the revision issues itself.
    """
    reasons = _matches(_SOURCE_MARKERS, source)
    if offline_sql:
        reasons += _matches(_SQL_MARKERS, offline_sql)
    return sorted(set(reasons))


# Every marker above contains one of these words, in any case. Most revisions hold none of
# them, and looking for them first is ~30x cheaper than the regexes (~1 us against ~40 us).
_WORDS = ("commit", "concurrently", "vacuum")


def _matches(markers: tuple[tuple[re.Pattern[str], str], ...], text: str) -> list[str]:
    lowered = text.lower()
    if not any(word in lowered for word in _WORDS):
        return []
    return [label for pattern, label in markers if pattern.search(text)]
