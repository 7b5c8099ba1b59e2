"""Which of the objects that appeared during a failed step are the step's own.

The catalog says what is new since the pre-step record; it cannot say who made it. An object
the failed revision's code names is attributed to it (recovery may drop it); anything else
that appeared meanwhile (the application's table, a DBA's index) is reported and never
touched. A name the code builds at run time is reported too: safe, and said so in the plan.
"""

from __future__ import annotations

from typing import Any

import psycopg

from runner.db import objects
from runner.db.objects import Existing, Recorded


def _name_in_code(obj: Recorded) -> str:
    # An enum value is recorded as its SQL literal ('sad'): the code names the label.
    if obj.kind == "enum_value":
        return obj.name[1:-1].replace("''", "'")
    return obj.name


def attribute(found: list[Recorded], source: str) -> tuple[list[Recorded], list[Recorded]]:
    """(named by the revision's code, not named). Case-insensitive: PostgreSQL folds
    unquoted names to lower case."""
    code = source.lower()
    mine = [obj for obj in found if _name_in_code(obj).lower() in code]
    others = [obj for obj in found if _name_in_code(obj).lower() not in code]
    return mine, others


def record(conn: psycopg.Connection[Any], before: Existing,
           source: str) -> tuple[list[Recorded], list[Recorded]]:
    """What the failed step left: (its own, others that appeared meanwhile)."""
    return attribute(objects.created_since(conn, before), source)
