"""Preflight checks on the revision graph and on the database's revision(s).

Pure functions over alembic's ScriptDirectory / RevisionMap: tested without a database.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

from alembic.script import Script, ScriptDirectory
from alembic.script.revision import (
    CycleDetected,
    DependencyCycleDetected,
    MultipleHeads,
    ResolutionError,
    RevisionError,
)
from alembic.util.exc import CommandError

from runner.errors import (
    MultipleHeadsError,
    PreflightError,
    UnknownDatabaseRevisionError,
    UsageError,
)


@dataclass(frozen=True)
class History:
    script: ScriptDirectory
    heads: tuple[str, ...]

    @functools.cached_property
    def revisions(self) -> tuple[Script, ...]:
        """Every revision, base -> heads order (walked on first use: most commands never do)."""
        return tuple(reversed(list(self.script.walk_revisions("base", "heads"))))

    def by_id(self, revision: str) -> Script:
        found = self.script.get_revision(revision)
        assert found is not None
        return found


def load_history(script: ScriptDirectory, *, config_hint: str = "alembic.ini") -> History:
    """Build the revision graph; every way it can be broken is a PreflightError (exit 3)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            heads = tuple(script.get_heads())  # builds the map: cycles and gaps show here
        except (CycleDetected, DependencyCycleDetected) as exc:
            raise PreflightError(
                f"the revision history has a cycle through {', '.join(exc.revisions)}: "
                "fix the down_revision of one of them") from None
        except KeyError as exc:
            raise PreflightError(
                f"a revision names down_revision {exc.args[0]!r}, which does not exist"
                f"{_warning_detail(caught)}: restore that revision or fix the down_revision"
            ) from None
        except (RevisionError, CommandError) as exc:
            raise PreflightError(f"the revision history is broken: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - importing the user's revision files
            raise PreflightError(
                f"cannot load the migration scripts: {type(exc).__name__}: {exc}") from None
    _check_warnings(caught)
    if not heads:
        raise UsageError(
            f"no migration scripts found in {script.versions}: check script_location "
            f"in {config_hint}")
    return History(script=script, heads=heads)


def _warning_detail(caught: list[warnings.WarningMessage]) -> str:
    texts = [str(w.message) for w in caught if "is not present" in str(w.message)]
    return f" ({texts[0]})" if texts else ""


_DUPLICATE = re.compile(r"Revision (\S+) is present more than once")


def _check_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Alembic only warns about these while building the map; for a deploy they are fatal."""
    for warning in caught:
        text = str(warning.message)
        if _DUPLICATE.search(text):
            raise PreflightError(f"duplicate revision id: {text}; give each revision its own id")
        if "is not present" in text:
            raise PreflightError(f"missing down_revision: {text}")


def merge_command(heads: tuple[str, ...], config_hint: str) -> str:
    return f"alembic -c {config_hint} merge -m 'merge heads' {' '.join(heads)}"


# alembic's relative forms: +1, -1, r1+2, heads-1.
_RELATIVE = re.compile(r"[+-]\d+$")


def check_target(history: History, target: str, *, config_hint: str) -> tuple[str, ...]:
    """Resolve TARGET to revision ids. Multiple heads are refused: a deploy is linear.
    A relative target is refused: what it names depends on the database's state when the
    Job runs, and -1 would be a downgrade."""
    if _RELATIVE.search(target) and target not in _revision_ids(history.script):
        raise PreflightError(
            f"relative target {target!r}: upgrade takes a revision id or heads, which name "
            "the same schema however often the Job runs", target=target)
    if len(history.heads) > 1 and target in ("head", "heads"):
        raise MultipleHeadsError(list(history.heads), merge_command(history.heads, config_hint))
    try:
        resolved = history.script.get_revisions(target)
    except MultipleHeads as exc:
        raise MultipleHeadsError(
            list(exc.heads), merge_command(tuple(exc.heads), config_hint)) from None
    except (ResolutionError, CommandError, RevisionError) as exc:
        raise PreflightError(f"target revision {target!r} not found: {exc}") from None
    return tuple(rev.revision for rev in resolved if rev is not None)


def check_not_behind(history: History, target: str, heads: tuple[str, ...]) -> None:
    """Nothing to apply, yet the database is not at the target: the target is behind it (or
    on another branch). Alembic does nothing then; upgrade refuses (exit 3)."""
    if target in ("head", "heads"):
        return
    try:
        wanted = {s.revision for s in history.script.get_revisions(target) if s is not None}
    except Exception:  # noqa: BLE001 - a form alembic resolves only with the heads: its call
        return
    if wanted <= set(heads) and (wanted or not heads):
        return  # already there ("base" on an empty database included)
    raise PreflightError(
        f"the database is at {', '.join(heads) or 'base'}, past or beside target {target}: "
        "upgrade never downgrades (use `alembic downgrade` deliberately, after review)",
        heads=list(heads), target=target)


def _revision_ids(script: ScriptDirectory) -> set[str]:
    return {s.revision for s in script.walk_revisions()}


def check_database_revisions(history: History, db_heads: tuple[str, ...]) -> None:
    unknown = unknown_revisions(history, db_heads)
    if unknown:
        raise UnknownDatabaseRevisionError(unknown)
    if len(db_heads) > 1:
        check_heads_independent(history.script, db_heads)


def check_heads_independent(script: ScriptDirectory, db_heads: tuple[str, ...]) -> None:
    """The version table holds one row per branch head: a row that is an ancestor of another
    row (two rows for an unbranched history) is an inconsistent table, not a state."""
    for head in db_heads:
        ancestors = {s.revision for s in script.iterate_revisions(head, "base")} - {head}
        behind = sorted(set(db_heads) & ancestors)
        if behind:
            rows = ", ".join(sorted(db_heads))
            raise PreflightError(
                f"the version table is inconsistent: it holds {rows}, but {', '.join(behind)} "
                f"is an ancestor of {head}; after review run `alembic stamp --purge {head}`",
                heads=sorted(db_heads))


def unknown_revisions(history: History, db_heads: tuple[str, ...]) -> list[str]:
    """The database's revisions that the migration scripts do not contain."""
    return [rev for rev in db_heads if not _known(history.script, rev)]


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (ResolutionError, CommandError, RevisionError):
        return False


def pending(history: History, db_heads: tuple[str, ...], target: str) -> list[Script]:
    """Revisions an upgrade from db_heads to target applies, in order."""
    # alembic's own ordering; its annotation says str, but command.upgrade passes the heads tuple
    steps = history.script._upgrade_revs(target, db_heads)  # type: ignore[arg-type]
    return [step.revision for step in steps]


def applied(script: ScriptDirectory, heads: tuple[str, ...] | list[str], revision: str) -> bool:
    """Whether the database at `heads` has `revision` (it or a descendant is applied)."""
    if not heads:
        return False
    try:
        return any(s.revision == revision for s in script.iterate_revisions(tuple(heads), "base"))
    except Exception:  # noqa: BLE001 - an unknown head: nothing can be vouched for
        return False


def revision_source(script: Script) -> str:
    """The revision file's text ("" if it cannot be read: the markers then find nothing)."""
    return read_source(script.path)


def read_source(path: str | None) -> str:
    """A revision file's text by its path ("" without one, or when it cannot be read)."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""
