"""What a failed migration statement says, for every framework and driver: its SQLSTATE,
message, PostgreSQL's DETAIL and HINT, the file and line of the migration that raised, and
whether a statement ended its own transaction (a raw COMMIT / ROLLBACK).

Framework-neutral: it imports neither alembic nor SQLAlchemy nor Django (the Django path must
not load them), and reads drivers' errors by duck typing: psycopg 3, psycopg2 and asyncpg.
"""

from __future__ import annotations

import os
import re
from typing import Any

from runner.db.connect import first_line
from runner.urls import mask_text

#: A lost lock race: lock_not_available (lock_timeout), deadlock_detected. A statement that
#: failed so, in a transaction that committed nothing, is safe to run again.
LOCK_RACE = frozenset({"55P03", "40P01"})


def sqlstate_of(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        # psycopg 3 and asyncpg say sqlstate, psycopg2 pgcode
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if state:
            return str(state)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def error_info(exc: BaseException, path: str | None = None) -> dict[str, Any]:
    """What run.json, the ledger, the events and the plan say about a failure: SQLSTATE,
    message, PostgreSQL's DETAIL and HINT, and where in the migration it was raised (`file`,
    `line`: the deepest frame in `path`, the revision's file, else in its directory)."""
    orig = getattr(exc, "orig", None) or exc
    detail, hint = _diagnostics(exc)
    file, line = raised_at(exc, path)
    return {"sqlstate": sqlstate_of(exc), "type": type(orig).__name__,
            "message": first_line(mask_text(str(orig))) or type(orig).__name__,
            "detail": detail, "hint": hint, "file": file, "line": line}


#: DETAIL can quote a row's values (a duplicated key): enough to say which, never a dump.
_DIAG_MAX = 500


def _diagnostics(exc: BaseException) -> tuple[str | None, str | None]:
    """PostgreSQL's DETAIL and HINT, from the DBAPI error under SQLAlchemy's wrapper (`.orig`)
    or a driver's own chain (`__cause__`): psycopg 3 and psycopg2 have `diag`, asyncpg has
    `detail` / `hint`."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; never loop on a cycle
        if seen is None:
            break
        diag = getattr(seen, "diag", None)
        if diag is not None:
            detail = getattr(diag, "message_detail", None)
            hint = getattr(diag, "message_hint", None)
        elif not type(seen).__module__.startswith("sqlalchemy"):  # its .detail is a list
            detail, hint = getattr(seen, "detail", None), getattr(seen, "hint", None)
        else:
            detail = hint = None
        if isinstance(detail, str) or isinstance(hint, str):
            return _diag_text(detail), _diag_text(hint)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None, None


def _diag_text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    text = mask_text(" ".join(value.split()))
    return text if len(text) <= _DIAG_MAX else text[:_DIAG_MAX - 1] + "…"


def raised_at(exc: BaseException, path: str | None) -> tuple[str | None, int | None]:
    """The migration's file and line that raised: the deepest traceback frame in the revision
    file `path`, else the deepest in its directory (a helper module beside it)."""
    if not path:
        return None, None
    target = os.path.realpath(path)
    folder = os.path.dirname(target) + os.sep
    in_file: tuple[str, int] | None = None
    in_folder: tuple[str, int] | None = None
    real: dict[str, str] = {}  # a traceback repeats its files: resolve each once
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        resolved = real.get(name)
        if resolved is None:
            resolved = real[name] = os.path.realpath(name)
        if resolved == target:
            in_file = (path, tb.tb_lineno)
        elif resolved.startswith(folder):
            in_folder = (name, tb.tb_lineno)
        tb = tb.tb_next
    found = in_file or in_folder
    return found if found else (None, None)


# A statement that ends the transaction it runs in (not ROLLBACK TO SAVEPOINT).
_ENDS_TRANSACTION = re.compile(
    r"(?:^|;)\s*(?:COMMIT|END|ABORT|ROLLBACK(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b))"
    r"(?:\s+(?:WORK|TRANSACTION))?\s*(?:;|$)", re.I)


def ends_transaction(statement: str) -> bool:
    lowered = statement.lower()
    if not any(word in lowered for word in ("commit", "rollback", "end", "abort")):
        return False  # the common case, ~20x cheaper than the pattern
    return _ENDS_TRANSACTION.search(statement) is not None
