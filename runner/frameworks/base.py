"""What the framework-neutral core sees of a migration framework: its steps.

A step is the unit both adapters expose: the console, the ledger, retries and recovery treat
an Alembic revision and a Django migration alike. The seam itself is `runner.upgrade.
UpgradeDriver` (and `runner.recovery.execute` for recover): each framework's job subclasses
it and provides only what differs (plan and apply the steps, what an error means there, read
its heads, the recovery plan in its own commands, its run.json keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


@dataclass
class Step:
    """One migration to apply, and what happened to it (a run.json entry)."""

    id: str  # alembic: the revision; django: "app.0003_name"
    title: str  # django: the migration's name; alembic: "" (the console reads the message)
    previous: str | list[str] | None  # what the database is at without it (the stamp target)
    path: str  # where its code lives
    non_transactional_reasons: list[str] = field(default_factory=list)
    line: int | None = None
    attempts: int = 0
    lock_wait_ms: int = 0
    duration_ms: int | None = None
    outcome: str = "pending"  # applied | failed | partial | interrupted | pending
    error: dict[str, Any] | None = None
    blockers: list[dict[str, Any]] = field(default_factory=list)
    partial: bool = False
    started_at: float | None = None  # time.monotonic() at the running attempt's start
    # The step ran its own COMMIT/ROLLBACK inside its transaction: no longer one unit.
    broke_transaction: bool = False

    @property
    def transactional(self) -> bool:
        return not self.non_transactional_reasons

    def to_dict(self) -> dict[str, Any]:
        # No title on the Alembic path (empty there): its run.json entries never had one.
        return {"revision": self.id, **({"title": self.title} if self.title else {}),
                "down_revision": self.previous,
                "path": self.path, "transactional": self.transactional,
                "non_transactional_reasons": self.non_transactional_reasons,
                "attempts": self.attempts, "lock_wait_ms": self.lock_wait_ms,
                "duration_ms": self.duration_ms, "outcome": self.outcome, "error": self.error,
                "blockers": self.blockers, "committed_part": self.partial}


@dataclass
class Database:
    """The database a run migrates, as the framework's connection found it."""

    url: URL
    version_table: str
    version_schema: str
    server_version_num: int
    server_version: str


def read_source(path: str | None) -> str:
    """A step's file text by its path ("" without one, or when it cannot be read)."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""
