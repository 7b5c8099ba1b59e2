"""Lint each pending revision's offline SQL with squawk (https://squawkhq.com).

What squawk sees is what the revision itself runs: alembic's bookkeeping (the version table's
CREATE/INSERT/UPDATE/DELETE) and the BEGIN/COMMIT that wrap each revision are removed, and
squawk is told (`--assume-in-transaction`) that the runner wraps every revision in its own
transaction. An `autocommit_block()` shows up as `COMMIT; ... BEGIN;` inside the revision, so
squawk still knows which statements run outside the transaction.

Each revision is linted on its own terms: one that cannot be rendered offline (it reads rows
through `op.get_bind()`) is reported as an `unrenderable` finding, and the others are still
linted. The range is rendered in one env.py run; only when a revision raises does rendering
resume after it, so the cost grows with the number of unrenderable revisions, not the range.

Rules: squawk's lock and safety rules by default; its style rules (STYLE_RULES) with
`--lint-rules all`. A project's `.squawk.toml` with `excluded_rules` decides instead.

Per-revision opt-out: a line `# safe-migrate: ignore=rule-a,rule-b` in the revision file
(`ignore=unrenderable` for a revision that cannot render offline). squawk's own
`-- squawk-ignore rule` comments inside `op.execute()` SQL work too.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alembic.script import Script

from runner.db.connect import first_line
from runner.errors import LintUnavailableError, PreflightError
from runner.frameworks.alembic.planning.history import History, revision_source
from runner.frameworks.alembic.planning.offline import RUNNING, offline_sql, split_by_revision
from runner.frameworks.alembic.project import Project
from runner.urls import mask_text

LintMode = Literal["error", "warn", "off"]
LintRules = Literal["safety", "all"]

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
#: squawk's style rules (squawk 2.x names): about schema taste, not locks or safety. On one
#: real history they made 816 warnings that buried the safety findings: `--lint-rules all`.
STYLE_RULES: tuple[str, ...] = (
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-text-field",
    "prefer-timestamptz",
    "ban-char-field",
)
#: Our own rule: a revision whose SQL cannot be produced offline cannot be linted.
UNRENDERABLE = "unrenderable"
SQUAWK_CONFIG = ".squawk.toml"
# Kept on purpose: prefer-robust-stmts. With --assume-in-transaction it only fires for
# statements outside the revision's transaction (autocommit blocks), exactly the ones a retry
# after a partial apply re-runs, so they need IF [NOT] EXISTS.

_IGNORE_COMMENT = re.compile(r"^\s*#\s*safe-migrate:\s*ignore\s*=\s*([\w\-, ]+)", re.M)
_VERSION_CREATE = re.compile(r"^\s*CREATE TABLE\s+(?:\"?[\w$]+\"?\.)?\"?([\w$]+)\"?", re.I | re.M)
_DEFAULT_VERSION_TABLE = "alembic_version"
_INSTALL_HINT = ("squawk not found: it is installed with safe-migrate (the squawk-cli "
                 "package); reinstall safe-migrate or `pip install squawk-cli`, or pass "
                 "--lint off")


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str  # the revision file
    rule: str
    level: str  # "error" | "warning" (as squawk reports it)
    message: str
    help: str | None
    line: int  # 1-based, in the revision's linted SQL (RevisionSQL.lint_sql); 0: none
    statement: str | None = None  # the offending statement, shortened

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

@dataclass
class Rendered:
    """The pending revisions' offline SQL, and why some have none."""

    sql: dict[str, RevisionSQL] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # revision -> what it raised


def revisions_sql(project: Project, history: History, revisions: list[str],
                  start: str | None = None, *, log: Any = None) -> Rendered:
    """Offline SQL of each revision in `revisions` (upgrade order).

    `start` is the database's revision the range begins at ("base" for none); by default the
    first revision's down_revision. A revision that raises offline is in `errors`; the others
    still get their SQL.
    """
    if not revisions:
        return Rendered()
    start = start or _start_of(history.by_id(revisions[0]))
    wanted = set(revisions)
    parts, errors, table = _render(project, start, revisions[-1], wanted, log)
    if wanted - parts.keys() - errors.keys():
        # Branches or a merge the range did not cover: take everything from base.
        parts, errors, table = _render(project, "base", "heads", wanted, log)
    bookkeeping = _bookkeeping(table)
    return Rendered(
        sql={rev: _revision_sql(rev, parts[rev], bookkeeping) for rev in revisions if rev in parts},
        errors={rev: errors[rev] for rev in revisions if rev in errors})


def _render(project: Project, start: str, end: str, wanted: set[str],
            log: Any) -> tuple[dict[str, str], dict[str, str], str]:
    """({revision: its SQL}, {revision: its error}, version table) for `start:end`.

    One env.py run for the range; when a revision raises, rendering resumes right after it
    (offline SQL does not depend on what ran before), so one data migration costs one more
    run instead of switching lint off for the whole range.
    """
    parts: dict[str, str] = {}
    errors: dict[str, str] = {}
    table: str | None = None
    tried: set[str] = set()
    while True:
        buffer = io.StringIO()
        error: str | None = None
        try:
            offline_sql(project, f"{start}:{end}", buffer=buffer, log=log)
        except Exception as exc:  # noqa: BLE001 - env.py and the migrations are the user's code
            error = describe_error(exc)
        raw = buffer.getvalue()
        table = table or _created_version_table(raw)
        got = split_by_revision(raw)
        failed = running_revision(raw) if error is not None else None
        if failed is not None:
            got.pop(failed, None)  # its SQL stops where it raised
            errors[failed] = error or ""
        parts.update(got)
        if error is None:
            break
        if failed is None or failed == end or failed in tried:
            # No revision to resume after (env.py itself failed before the first one, say):
            # whatever did not render carries the error.
            errors.update({rev: error for rev in wanted - parts.keys() - errors.keys()})
            break
        tried.add(failed)
        start = failed
    return parts, errors, table or _DEFAULT_VERSION_TABLE


def running_revision(sql: str) -> str | None:
    """The revision whose header came last in (partial) offline SQL: the one that raised."""
    headers = list(RUNNING.finditer(sql))
    return headers[-1].group(2) if headers else None


def describe_error(exc: BaseException) -> str:
    """`Type: first line of the message`, masked: what a finding or an event shows."""
    return first_line(mask_text(f"{type(exc).__name__}: {exc}"))


def _start_of(script: Script) -> str:
    down = script.down_revision
    if down is None:
        return "base"
    if isinstance(down, str):
        return down
    return "base"  # a merge: no single start revision


def version_table_of(sql: str) -> str:
    """The version table alembic creates before the first revision (env.py may rename it)."""
    return _created_version_table(sql) or _DEFAULT_VERSION_TABLE


def _created_version_table(sql: str) -> str | None:
    first = RUNNING.search(sql)
    preamble = sql[:first.start()] if first else ""
    match = _VERSION_CREATE.search(preamble)
    return match.group(1) if match else None


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


@dataclass(frozen=True)
class RuleSet:
    """What squawk is told: the rules it leaves out, and the project's own config file."""

    excluded: tuple[str, ...]
    config: Path | None = None

    def argv(self) -> list[str]:
        config = [f"--config={self.config}"] if self.config else []
        # --exclude-path replaces the file's excluded_paths, which name the project's own .sql
        # files: they must not match the rendered SQL's temporary files.
        return [*config, f"--exclude={','.join(self.excluded)}",
                "--exclude-path=.safe-migrate-excludes-no-path"]


def rule_set(rules: str = "safety", *, ini_dir: Path | None = None) -> RuleSet:
    """squawk's rules for this project: the safety rules (`safety`) or all of them (`all`).

    A `.squawk.toml` that lists `excluded_rules` decides over our style exclusions; squawk's
    `--exclude` replaces the file's list, so both go on the command line. The rules the
    runner makes moot (EXCLUDED_RULES) stay out whatever the file says.
    """
    config = find_squawk_config(ini_dir)
    project = _config_excluded(config) if config else None
    if project is not None:
        style: tuple[str, ...] = tuple(project)
    else:
        style = () if rules == "all" else STYLE_RULES
    return RuleSet(excluded=tuple(dict.fromkeys((*EXCLUDED_RULES, *style))), config=config)


def find_squawk_config(ini_dir: Path | None = None) -> Path | None:
    """`.squawk.toml` where squawk itself looks (this directory, then its parents), else
    beside alembic.ini or above it: squawk runs here in a temporary directory."""
    cwd = Path.cwd()
    places = [cwd, *cwd.parents]
    if ini_dir is not None:
        ini_dir = ini_dir.resolve()
        places += [ini_dir, *ini_dir.parents]
    return next((d / SQUAWK_CONFIG for d in places if (d / SQUAWK_CONFIG).is_file()), None)


def _config_excluded(path: Path) -> list[str] | None:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LintUnavailableError(f"squawk config {path} cannot be read: {exc}") from None
    excluded = data.get("excluded_rules")
    if excluded is None:
        return None
    if not isinstance(excluded, list) or not all(isinstance(r, str) for r in excluded):
        raise LintUnavailableError(f"squawk config {path}: excluded_rules must be a list of "
                                   "rule names")
    return excluded


def lint_sql(items: list[tuple[Script, str]], *, squawk: Path | None = None,
             rules: RuleSet | None = None) -> list[Finding]:
    """Lint each (revision script, its SQL) in one squawk run; findings in input order."""
    items = [(script, sql) for script, sql in items if sql.strip()]
    if not items:
        return []
    squawk = squawk or find_squawk()
    rules = rules or rule_set()
    with tempfile.TemporaryDirectory(prefix="safe-migrate-lint-") as tmp:
        if rules.config is None:
            # squawk looks for one from its working directory up (/tmp, /): a stray file
            # there (its excluded_paths, say) must not decide what is linted.
            (Path(tmp) / SQUAWK_CONFIG).write_text("")
        files: dict[str, tuple[Script, str]] = {}
        for i, (script, sql) in enumerate(items):
            path = Path(tmp) / f"{i:04d}.sql"
            path.write_text(sql + "\n")
            files[str(path)] = (script, sql)
        argv = [str(squawk), "--reporter", "json", "--assume-in-transaction", *rules.argv(),
                *files]
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
    ignores = {name: ignored_rules(revision_source(script)) for name, (script, _) in files.items()}
    for report in reports:
        name = str(report.get("file"))
        if name not in files:
            continue
        (script, sql), rule = files[name], str(report.get("rule_name", "?"))
        if rule in ignores[name]:
            continue
        line = int(report.get("line", 0))  # squawk counts lines from 0
        found.append((order[name], Finding(
            revision=script.revision, path=script.path, rule=rule,
            level=str(report.get("level", "warning")).lower(),
            message=str(report.get("message", "")), help=report.get("help") or None,
            line=line + 1, statement=statement_at(sql, line))))
    found.sort(key=lambda item: (item[0], item[1].line))  # revision order, then line
    return [finding for _, finding in found]


_STATEMENT_CHARS = 160


def statement_at(sql: str, line: int) -> str | None:
    """The statement of `sql` that 0-based `line` falls in, on one line and shortened."""
    current: str | None = None
    position = 0
    for statement in split_sql(sql):
        start = sql.find(statement, position)
        if start < 0 or sql.count("\n", 0, start) > line:
            break
        current, position = statement, start + len(statement)
    if current is None:
        return None
    text = " ".join((_code(current) or current).split())
    return text if len(text) <= _STATEMENT_CHARS else text[:_STATEMENT_CHARS - 3] + "..."


def unrenderable(items: list[tuple[Script, str]], mode: str) -> list[Finding]:
    """One finding per (revision, why it cannot render offline), unless its file opts out."""
    level = "error" if mode == "error" else "warning"
    return [Finding(
        revision=script.revision, path=script.path, rule=UNRENDERABLE, level=level,
        message=f"its SQL cannot be produced offline, so it cannot be linted: {error}",
        help="make the revision renderable with `alembic upgrade --sql`, or, once reviewed, "
             f"add `# safe-migrate: ignore={UNRENDERABLE}` to its file", line=0)
        for script, error in items
        if UNRENDERABLE not in ignored_rules(revision_source(script))]


def lint_pending(project: Project, history: History, revisions: list[str], *,
                 mode: str = "warn", rules: str = "safety", log: Any = None) -> list[Finding]:
    """Findings for the pending `revisions` (upgrade order). For `upgrade --lint`.

    A revision that cannot be rendered offline is an `unrenderable` finding; the others
    are linted all the same.
    """
    rendered = revisions_sql(project, history, revisions, log=log)
    findings = lint_sql([(history.by_id(rev), rendered.sql[rev].lint_sql)
                         for rev in revisions if rev in rendered.sql],
                        rules=rule_set(rules, ini_dir=project.ini_path.parent))
    missing = [(history.by_id(rev), rendered.errors.get(rev, "no offline SQL for it"))
               for rev in revisions if rev not in rendered.sql]
    return sort_findings(findings + unrenderable(missing, mode), revisions)


def sort_findings(findings: list[Finding], revisions: list[str]) -> list[Finding]:
    order = {rev: i for i, rev in enumerate(revisions)}
    return sorted(findings, key=lambda f: (order.get(f.revision, len(order)), f.line))


def enforce(findings: list[Finding], mode: str, log: Any) -> None:
    """Log every finding; in `error` mode any finding refuses the run (exit 3)."""
    for f in findings:
        log.warning("lint.finding", revision=f.revision, path=f.path, rule=f.rule,
                    level=f.level, line=f.line, statement=f.statement, message=f.message,
                    help=f.help)
    if mode == "error" and findings:
        shown = "; ".join(_one_line(f) for f in findings[:_SHOWN])
        more = f"; and {len(findings) - _SHOWN} more" if len(findings) > _SHOWN else ""
        raise PreflightError(
            f"lint: {len(findings)} finding(s) with --lint error: {shown}{more}. Fix them, "
            "or silence one for a revision with `# safe-migrate: ignore=RULE` in its file",
            findings=[f.to_dict() for f in findings])


_SHOWN = 5


def _one_line(f: Finding) -> str:
    where = f"{f.revision} ({f.path})"
    what = f": `{f.statement}`" if f.statement else f": {f.message}"
    return f"{where} {f.rule}{what}"
