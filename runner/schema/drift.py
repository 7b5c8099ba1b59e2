"""Schema drift: the live schema compared with the one `verify` recorded for that revision.

`verify --schema-dir DIR` writes `DIR/<revision>.sql` (and `DIR/base.sql`) after each upgrade
of its stairway; `verify --write-schema FILE` writes the schema at heads. Both are normalized
`pg_dump --schema-only` output without the version table, as upgrade's snapshots are.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import UsageError
from runner.schema import snapshot


def expected_path(expected: Path, revision: str) -> Path:
    """The recorded schema for `revision`: `expected` itself, or `expected/<revision>.sql`."""
    if expected.is_dir():
        path = expected / f"{revision}.sql"
        if not path.is_file():
            raise UsageError(f"no recorded schema for revision {revision} in {expected}: "
                             f"run `safe-migrate verify --schema-dir {expected}`")
        return path
    if not expected.is_file():
        raise UsageError(f"expected schema {expected} not found")
    return expected


def revision_key(heads: tuple[str, ...] | list[str] | None) -> str:
    """The file name stem for a database at `heads` ("base" when it has no revision)."""
    return "+".join(sorted(heads)) if heads else "base"


def check_drift(live_schema_text: str, expected_file: Path, revision: str) -> str | None:
    """Unified diff (expected -> live) when the live schema differs, else None.

    Both sides are normalized again (normalize is idempotent), so a hand-edited or
    older-format expected file compares fairly.
    """
    path = expected_path(expected_file, revision)
    try:
        expected = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read expected schema {path}: {exc.strerror}") from None
    before, after = snapshot.normalize(expected), snapshot.normalize(live_schema_text)
    if before == after:
        return None
    return snapshot.diff(before, after, before_name=f"expected/{path.name}",
                         after_name=f"live/{revision}.sql")
