"""Preflight checks on the revision graph and on the database's revision(s).

Pure functions over alembic's ScriptDirectory / RevisionMap: tested without a database.
"""

from __future__ import annotations

import functools
import re
import warnings

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import (
    CycleDetected,
    DependencyCycleDetected,
    MultipleHeads,
    ResolutionError,
    RevisionError,
    RevisionMap,
)
from alembic.util.exc import CommandError

from runner.errors import (
    MultipleHeadsError,
    PreflightError,
    UnknownDatabaseRevisionError,
    UsageError,
)
from runner.frameworks.base import read_source


class History:
    """The revision graph, built when alembic itself would build it.

    Bare alembic imports the revision files only once env.py calls `run_migrations()`, so a
    revision module may rely on what env.py set up first: the app package on sys.path, an
    imported and configured application, `context.script.version_locations`. The cut (issue
    14, item 2): nothing is imported up front. Every command runs env.py first (the probe,
    read-only as `alembic current`; `plan --from` offline) and the graph is built in its fn,
    inside `run_migrations()`: `load()`, passed to probe() / offline_sql(). Graph errors
    (several heads, a cycle, an unknown target) are therefore found once env.py connected,
    never before; a module that fails to import is named with its file and line (exit 3).
    Importing early instead (and deferring only on failure) was tried and dropped: a module
    that imports without error before env.py's setup (settings read from the environment
    env.py prepares) would be cached in sys.modules with the wrong state.
    """

    def __init__(self, script: ScriptDirectory, config_hint: str = "alembic.ini",
                 config: Config | None = None) -> None:
        self.script = script
        self.config_hint = config_hint
        self.config = config
        self._heads: tuple[str, ...] | None = None

    @property
    def heads(self) -> tuple[str, ...]:
        return self.load()

    def load(self) -> tuple[str, ...]:
        """Build the graph now (idempotent): called from env.py's run_migrations()."""
        if self._heads is None:
            _forget_revisions(self.script)  # env.py may have changed version_locations
            try:
                self._heads = _build(self.script, self.config_hint)
            except UsageError:
                self._explain_set_main_option()
                raise
        return self._heads

    def _explain_set_main_option(self) -> None:
        """No revision found, and env.py set version_locations in the Config: alembic reads
        that option before env.py runs (ScriptDirectory.from_config), so bare alembic finds
        no revision either and silently does nothing. Said plainly rather than 'no scripts'."""
        if self.config is None:
            return
        wanted = self.config.get_version_locations_list() or []
        if wanted and list(wanted) != list(self.script.version_locations):
            raise UsageError(
                f"env.py sets version_locations ({', '.join(wanted)}) with "
                "config.set_main_option, which alembic reads before env.py runs: no revision "
                "is found there (bare alembic does nothing either). Set "
                "context.script.version_locations in env.py, or version_locations in "
                f"{self.config_hint}")

    @functools.cached_property
    def revisions(self) -> tuple[Script, ...]:
        """Every revision, base -> heads order (walked on first use: most commands never do)."""
        self.load()
        return tuple(reversed(list(self.script.walk_revisions("base", "heads"))))

    def by_id(self, revision: str) -> Script:
        self.load()
        found = self.script.get_revision(revision)
        assert found is not None
        return found


def load_history(script: ScriptDirectory, *, config_hint: str = "alembic.ini",
                 config: Config | None = None) -> History:
    """The revision graph, built on first use (History.load, from env.py's run): every way
    it can be broken is then a PreflightError (exit 3)."""
    return History(script, config_hint, config)


def _forget_revisions(script: ScriptDirectory) -> None:
    """Drop what was memoized before env.py ran (its version_locations may differ)."""
    for memo in ("_version_locations", "_singular_version_location"):
        script.__dict__.pop(memo, None)
    script.revision_map = RevisionMap(script._load_revisions)


def _build(script: ScriptDirectory, config_hint: str) -> tuple[str, ...]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            heads = tuple(script.get_heads())  # builds the map: cycles and gaps show here
        except Exception as exc:  # noqa: BLE001 - importing the user's revision files
            raise _graph_error(exc, caught) from None
    _check_warnings(caught)
    if not heads:
        raise UsageError(
            f"no migration scripts found in {_locations(script)}: check script_location "
            f"(or version_locations) in {config_hint}")
    return heads


def _locations(script: ScriptDirectory) -> str:
    try:
        return ", ".join(str(p) for p in script._version_locations)
    except Exception:  # noqa: BLE001 - a package resource that does not resolve
        return str(script.dir)


def _graph_error(exc: Exception, caught: list[warnings.WarningMessage]) -> Exception:
    where = import_failure(exc)
    if where is not None:
        path, line = where
        return PreflightError(
            f"cannot import revision file {path}:{line}: {type(exc).__name__}: "
            f"{_first_line(str(exc)) or type(exc).__name__}", file=path, line=line)
    if isinstance(exc, (CycleDetected, DependencyCycleDetected)):
        return PreflightError(
            f"the revision history has a cycle through {', '.join(exc.revisions)}: "
            "fix the down_revision of one of them")
    if isinstance(exc, KeyError):
        return PreflightError(
            f"a revision names down_revision {exc.args[0]!r}, which does not exist"
            f"{_warning_detail(caught)}: restore that revision or fix the down_revision")
    if isinstance(exc, (RevisionError, CommandError)):
        return PreflightError(f"the revision history is broken: {exc}")
    return PreflightError(
        f"cannot load the migration scripts: {type(exc).__name__}: {_first_line(str(exc))}")


def import_failure(exc: BaseException) -> tuple[str, int] | None:
    """(file, line) of the revision module whose import raised `exc`, else None.

    alembic imports each revision file with `load_module_py`: the first frame after that one
    (importlib's own are `<frozen ...>`) is the revision file at the line that raised; a
    syntax error carries its own file and line, whichever module had it.
    """
    seen_loader = False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if seen_loader and not code.co_filename.startswith("<"):
            return code.co_filename, tb.tb_lineno
        seen_loader = seen_loader or code.co_name == "load_module_py"
        tb = tb.tb_next
    if seen_loader and isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno or 0
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


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
