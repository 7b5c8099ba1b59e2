"""Which revisions are not transactional: known before running them, from source and offline SQL.

A non-transactional revision commits part of its work mid-step, so a failure can leave a
partial apply behind; the runner snapshots the schema right before running one.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable

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
    reasons = _matches(_SOURCE_MARKERS, source, code_of=python_code)
    if offline_sql:
        reasons += _matches(_SQL_MARKERS, offline_sql, code_of=_sql_code)
    return sorted(set(reasons))


# Every marker above contains one of these words, in any case. Most revisions hold none of
# them, and looking for them first is ~30x cheaper than the regexes (~1 us against ~40 us).
_WORDS = ("commit", "concurrently", "vacuum")


def _matches(markers: tuple[tuple[re.Pattern[str], str], ...], text: str, *,
             code_of: Callable[[str], str]) -> list[str]:
    lowered = text.lower()
    if not any(word in lowered for word in _WORDS):
        return []
    found = [(pattern, label) for pattern, label in markers if pattern.search(text)]
    if not found:
        return []
    # Confirmed on the code alone: tokenizing (~300 us a revision) only runs for a revision
    # whose text has a marker, where it may be a docstring's or a comment's.
    code = code_of(text)
    return [label for pattern, label in found if pattern.search(code)]


_DROPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                      tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER})
_STRING_PARTS = frozenset({tokenize.STRING, getattr(tokenize, "FSTRING_START", -1),
                           getattr(tokenize, "FSTRING_MIDDLE", -1),
                           getattr(tokenize, "FSTRING_END", -1)})


def python_code(source: str) -> str:
    """The source's tokens without comments and docstrings ("vacuum performance" in either
    is no VACUUM), joined by spaces. A string passed to op.execute() stays.

    A docstring is any statement made of string literals alone: it runs nothing. Source
    that does not tokenize is returned whole: markers then err on the safe side.
    """
    kept: list[str] = []
    statement: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NEWLINE:
                kept += _statement_code(statement)
                statement = []
            elif token.type not in _DROPPED:
                statement.append(token)
    except (tokenize.TokenError, SyntaxError):
        return source
    kept += _statement_code(statement)
    return " ".join(kept)


def _statement_code(tokens: list[tokenize.TokenInfo]) -> list[str]:
    if all(token.type in _STRING_PARTS for token in tokens):
        return []  # a docstring, or a string expression that does nothing
    return [token.string for token in tokens]


_SQL_COMMENT_LINE = re.compile(r"^\s*--.*$", re.M)


def _sql_code(sql: str) -> str:
    """Offline SQL without its comment lines (alembic's headers, notes in op.execute())."""
    return _SQL_COMMENT_LINE.sub("", sql)
