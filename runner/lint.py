"""Lint each pending revision's offline SQL with squawk (https://squawkhq.com).

What squawk sees is what the revision itself runs: alembic's bookkeeping (the version table's
CREATE/INSERT/UPDATE/DELETE) and the BEGIN/COMMIT that wrap each revision are removed, and
squawk is told (`--assume-in-transaction`) that the runner wraps every revision in its own
transaction. An `autocommit_block()` shows up as `COMMIT; ... BEGIN;` inside the revision, so
squawk still knows which statements run outside the transaction.

Per-revision opt-out: a line `# safe-migrate: ignore=rule-a,rule-b` in the revision file.
squawk's own `-- squawk-ignore rule` comments inside `op.execute()` SQL work too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from alembic.script import Script

from runner.errors import LintUnavailableError, PreflightError
from runner.planning.history import History, revision_source
from runner.planning.offline import RUNNING, offline_sql, split_by_revision
from runner.project import Project

LintMode = Literal["error", "warn", "off"]

#: Rules that make no sense for a revision run by alembic through safe-migrate.
EXCLUDED_RULES: tuple[str, ...] = (
    # autocommit_block() is alembic's sanctioned way out of the revision's transaction; it
    # shows up as COMMIT; ... BEGIN; and plan reports such revisions as non-transactional.
    "transaction-nesting",
    # The trailing BEGIN; is alembic reopening the step's transaction for its version row.
    "ban-uncommitted-transaction",
    # The runner sets lock_timeout / statement_timeout on the migration session itself
    # (--lock-timeout / --statement-timeout): the offline SQL cannot show it.
    "require-lock-timeout",
    "require-statement-timeout",
)
# Kept on purpose: prefer-robust-stmts. With --assume-in-transaction it only fires for
# statements outside the revision's transaction (autocommit blocks), exactly the ones a retry
# after a partial apply re-runs, so they need IF [NOT] EXISTS.

_IGNORE_COMMENT = re.compile(r"^\s*#\s*safe-migrate:\s*ignore\s*=\s*([\w\-, ]+)", re.M)
_VERSION_CREATE = re.compile(r"^\s*CREATE TABLE\s+(?:\"?[\w$]+\"?\.)?\"?([\w$]+)\"?", re.I | re.M)
_DEFAULT_VERSION_TABLE = "alembic_version"
_INSTALL_HINT = ("squawk not found: install it with `pip install squawk-cli` "
                 "(or `pip install 'safe-migrate[lint]'`), or pass --lint off")


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str  # the revision file
    rule: str
    level: str  # "error" | "warning" (as squawk reports it)
    message: str
    help: str | None
    line: int  # 1-based, in the revision's linted SQL (RevisionSQL.lint_sql)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RevisionSQL:
    """One revision's offline SQL, in the forms plan and lint need."""

    revision: str
    body: str  # the revision's own SQL (version-row update included), without its wrapper
    lint_sql: str  # body without alembic's bookkeeping: what squawk sees

    @property
    def wrapped(self) -> str:
        # The runner always runs one transaction per revision (transaction_per_migration).
        return f"BEGIN;\n\n{self.body}\n\nCOMMIT;\n" if self.body else "BEGIN;\n\nCOMMIT;\n"


# -- per-revision SQL --------------------------------------------------------------------------

def revisions_sql(project: Project, history: History, revisions: list[str],
                  start: str | None = None) -> dict[str, RevisionSQL]:
    """Offline SQL of each revision in `revisions` (upgrade order), from one or two env.py runs.

    `start` is the database's revision the range begins at ("base" for none); by default the
    first revision's down_revision. Raises whatever env.py raises offline.
    """
    if not revisions:
        return {}
    start = start or _start_of(history.by_id(revisions[0]))
    raw = offline_sql(project, f"{start}:{revisions[-1]}")
    parts = split_by_revision(raw)
    if any(rev not in parts for rev in revisions):
        # Branches or a merge the range did not cover: take everything from base.
        raw = offline_sql(project, "base:heads")
        parts = split_by_revision(raw)
    bookkeeping = _bookkeeping(version_table_of(raw))
    return {rev: _revision_sql(rev, parts[rev], bookkeeping) for rev in revisions if rev in parts}


def _start_of(script: Script) -> str:
    down = script.down_revision
    if down is None:
        return "base"
    if isinstance(down, str):
        return down
    return "base"  # a merge: no single start revision


def version_table_of(sql: str) -> str:
    """The version table alembic creates before the first revision (env.py may rename it)."""
    first = RUNNING.search(sql)
    preamble = sql[:first.start()] if first else ""
    match = _VERSION_CREATE.search(preamble)
    return match.group(1) if match else _DEFAULT_VERSION_TABLE


def _bookkeeping(version_table: str) -> re.Pattern[str]:
    """Alembic's own statements on the version table: not the revision's, nothing to lint."""
    return re.compile(
        r"^(?:CREATE TABLE|INSERT INTO|UPDATE|DELETE FROM)\s+(?:\"?[\w$]+\"?\.)?\"?"
        + re.escape(version_table) + r"\"?[\s(]", re.I)


def _revision_sql(revision: str, block: str, bookkeeping: re.Pattern[str]) -> RevisionSQL:
    statements = unwrap(split_sql(block))
    body = "\n\n".join(statements)
    kept = [s for s in statements if not bookkeeping.match(_code(s))]
    return RevisionSQL(revision=revision, body=body, lint_sql="\n\n".join(_drop_empty_reopen(kept)))


def split_sql(text: str) -> list[str]:
    """Statements (with the comment lines before them), split at lines ending in `;`."""
    from runner.schema.snapshot import _Quotes  # same quoting rules as the dump parser

    statements: list[str] = []
    current: list[str] = []
    quotes = _Quotes()
    for line in text.splitlines():
        if not current and not line.strip():
            continue
        current.append(line)
        quotes.feed(line)
        ends = line.rstrip().endswith(";") and not line.lstrip().startswith("--")
        if quotes.open is None and ends:
            statements.append("\n".join(current).strip())
            current = []
    rest = "\n".join(current).strip()
    if rest and _code(rest):
        statements.append(rest)
    return statements


def _code(statement: str) -> str:
    """The statement without its leading comment lines."""
    lines = statement.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines).strip()


def _is(statement: str, keyword: str) -> bool:
    return _code(statement).rstrip(";").strip().upper() == keyword


def unwrap(statements: list[str]) -> list[str]:
    """Remove the BEGIN/COMMIT alembic wraps a revision in.

    Without transaction_per_migration a block ends with the range's final COMMIT; with it, a
    block ends with `COMMIT; BEGIN;` (its commit, the next revision's begin).
    """
    out = list(statements)
    while out and _is(out[0], "BEGIN"):
        out.pop(0)
    if len(out) >= 2 and _is(out[-1], "BEGIN") and _is(out[-2], "COMMIT"):
        out = out[:-2]
    elif out and _is(out[-1], "COMMIT"):
        out.pop()
    return out


def _drop_empty_reopen(statements: list[str]) -> list[str]:
    # After an autocommit block alembic reopens a transaction just for the version row; with
    # the row gone it is empty: a trailing BEGIN; means nothing to squawk.
    out = list(statements)
    while out and _is(out[-1], "BEGIN"):
        out.pop()
    return out


# -- squawk ------------------------------------------------------------------------------------

def find_squawk() -> Path:
    """squawk on PATH, else next to this interpreter (a venv's bin/ need not be on PATH)."""
    found = shutil.which("squawk")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return beside
    raise LintUnavailableError(_INSTALL_HINT)


def ignored_rules(source: str) -> set[str]:
    """Rules silenced for one revision by `# safe-migrate: ignore=rule-a,rule-b`."""
    rules: set[str] = set()
    for match in _IGNORE_COMMENT.finditer(source):
        rules.update(r.strip() for r in match.group(1).split(",") if r.strip())
    return rules


def lint_sql(items: list[tuple[Script, str]], *, squawk: Path | None = None) -> list[Finding]:
    """Lint each (revision script, its SQL) in one squawk run; findings in input order."""
    items = [(script, sql) for script, sql in items if sql.strip()]
    if not items:
        return []
    squawk = squawk or find_squawk()
    with tempfile.TemporaryDirectory(prefix="safe-migrate-lint-") as tmp:
        files: dict[str, Script] = {}
        for i, (script, sql) in enumerate(items):
            path = Path(tmp) / f"{i:04d}.sql"
            path.write_text(sql + "\n")
            files[str(path)] = script
        argv = [str(squawk), "--reporter", "json", "--assume-in-transaction",
                f"--exclude={','.join(EXCLUDED_RULES)}", *files]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                    check=False, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LintUnavailableError(f"cannot run squawk at {squawk}: {exc}") from None
    try:
        reports = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LintUnavailableError(f"squawk failed (exit {result.returncode}): "
                                   f"{detail[0] if detail else 'no output'}") from None
    order = {name: i for i, name in enumerate(files)}
    found: list[tuple[int, Finding]] = []
    ignores = {name: ignored_rules(revision_source(script)) for name, script in files.items()}
    for report in reports:
        name = str(report.get("file"))
        if name not in files:
            continue
        script, rule = files[name], str(report.get("rule_name", "?"))
        if rule in ignores[name]:
            continue
        found.append((order[name], Finding(
            revision=script.revision, path=script.path, rule=rule,
            level=str(report.get("level", "warning")).lower(),
            message=str(report.get("message", "")), help=report.get("help") or None,
            line=int(report.get("line", 0)) + 1)))  # squawk counts lines from 0
    found.sort(key=lambda item: (item[0], item[1].line))  # revision order, then line
    return [finding for _, finding in found]


def lint_pending(project: Project, history: History, revisions: list[str]) -> list[Finding]:
    """Findings for the pending `revisions` (upgrade order). For `upgrade --lint`.

    A revision whose SQL cannot be produced offline (it reads data through op.get_bind())
    cannot be linted: raises whatever env.py raised; callers decide.
    """
    sql = revisions_sql(project, history, revisions)
    return lint_sql([(history.by_id(rev), sql[rev].lint_sql) for rev in revisions if rev in sql])


def enforce(findings: list[Finding], mode: str, log: Any) -> None:
    """Log every finding; in `error` mode any finding refuses the run (exit 3)."""
    for f in findings:
        log.warning("lint.finding", revision=f.revision, path=f.path, rule=f.rule,
                    level=f.level, line=f.line, message=f.message, help=f.help)
    if mode == "error" and findings:
        rules = sorted({f"{f.revision}:{f.rule}" for f in findings})
        raise PreflightError(
            f"lint: {len(findings)} finding(s) with --lint error ({', '.join(rules)}); fix them, "
            "or silence one for a revision with `# safe-migrate: ignore=RULE` in its file",
            findings=[f.to_dict() for f in findings])
