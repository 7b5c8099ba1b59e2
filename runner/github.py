"""GitHub Actions: the run's summary for `$GITHUB_STEP_SUMMARY`, and annotations.

Under `GITHUB_ACTIONS=true`, `upgrade` appends a Markdown summary of the run (migrations with
their durations, lint findings, and on failure the error and the recovery plan's commands) to
the file `$GITHUB_STEP_SUMMARY` names, and prints `::error` / `::warning` workflow commands on
stdout, which GitHub shows on the pull request's files.

Everything here works on plain data (run.json's dict, the recovery plan's dict, lint findings
as dicts), so it is tested without a database; `report_upgrade` and `report_lint` are the two
hooks `upgrade` calls. Nothing here may change a run's outcome: the hooks log and go on.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from runner.logging import get_logger

_DEF_UPGRADE = re.compile(r"^\s*(?:async\s+)?def\s+upgrade\s*\(")
_FAILED = ("failed", "partial", "interrupted")
_ICONS = {"applied": "✅", "failed": "❌", "partial": "⚠️", "interrupted": "⏹️"}


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("GITHUB_ACTIONS") == "true"


# -- workflow commands ------------------------------------------------------------------------

def escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF would end or garble the command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A property value (file, title...): also : and , which separate properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(kind: str, message: str, *, file: str | None = None, line: int | None = None,
            title: str | None = None) -> str:
    """`::error file=F,line=L,title=T::message` (kind: error, warning or notice)."""
    props = [f"{key}={escape_property(str(value))}"
             for key, value in (("file", file), ("line", line), ("title", title))
             if value is not None]
    return f"::{kind}{' ' + ','.join(props) if props else ''}::{escape_data(message)}"


def relative(path: str | None, root: Path) -> str | None:
    """The migration file as GitHub names it: relative to the repository (the workspace)."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path  # outside the repository: GitHub cannot place it, the text still says it


def upgrade_line(path: str | None) -> int | None:
    """The line of the revision's `def upgrade(`: where an annotation about the migration as a
    whole (a lint finding in its SQL, a failure without a known line) belongs."""
    if not path:
        return None
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((i for i, text in enumerate(lines, 1) if _DEF_UPGRADE.match(text)), None)


def _location(migration: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """Where the failure belongs: the file and line that raised (run.json's `error.file` /
    `error.line`, runner.db.failures.error_info), else the revision's
    `def upgrade(`."""
    error = migration.get("error") or {}
    error = error if isinstance(error, dict) else {}
    line = error.get("line") if isinstance(error.get("line"), int) else migration.get("line")
    if isinstance(line, int):
        return error.get("file") or migration.get("path"), line
    return migration.get("path"), upgrade_line(migration.get("path"))


def _error_text(error: Any, sep: str = "\n") -> str:
    if isinstance(error, dict):
        state = f"SQLSTATE {error['sqlstate']}: " if error.get("sqlstate") else ""
        extra = "".join(f"{sep}{label}: {error[key]}" for key, label in (("detail", "DETAIL"),
                                                                      ("hint", "HINT"))
                        if error.get(key))
        return f"{state}{error.get('message') or error.get('type') or 'failed'}{extra}"
    return str(error) if error else "failed"


def run_annotations(run: Mapping[str, Any], plan: Mapping[str, Any] | None,
                    root: Path) -> list[str]:
    """::error for each migration that failed (on its file), or for the run when none did."""
    out: list[str] = []
    next_step = f"; next: {plan['commands'][0]}" if plan and plan.get("commands") else ""
    for migration in run.get("migrations") or []:
        if migration.get("outcome") not in _FAILED:
            continue
        file, line = _location(migration)
        out.append(command(
            "error", f"{_error_text(migration.get('error'))}{next_step}",
            file=relative(file, root), line=line,
            title=f"safe-migrate: migration {migration['revision']} {migration['outcome']}"))
    if not out and run.get("exit_code") not in (0, None):
        out.append(command("error", str(run.get("error") or run.get("outcome")),
                           title=f"safe-migrate upgrade: {run.get('outcome')}"))
    return out


def lint_annotations(findings: Sequence[Mapping[str, Any]], *, error: bool,
                     root: Path) -> list[str]:
    """One ::warning per finding (::error when it refuses the run, --lint error)."""
    out = []
    for f in findings:
        line = f.get("file_line") if isinstance(f.get("file_line"), int) else None
        where = f" (SQL line {f['line']})" if f.get("line") else ""
        hint = f" Hint: {f['help']}" if f.get("help") else ""
        out.append(command("error" if error else "warning", f"{f['message']}{where}.{hint}",
                           file=relative(f.get("path"), root),
                           line=line or upgrade_line(f.get("path")),
                           title=f"squawk {f['rule']} ({f['revision']})"))
    return out


# -- the step summary -------------------------------------------------------------------------

def _cell(value: Any) -> str:
    """A Markdown table cell: one line, no column break."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = _cell(value)
    return f"`{text}`" if text and "`" not in text else text


def _seconds(run: Mapping[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(run["started_at"]))
        end = datetime.fromisoformat(str(run["ended_at"]))
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _ms(value: Any) -> str:
    return f"{value} ms" if isinstance(value, int) else "—"


def lint_markdown(findings: Sequence[Mapping[str, Any]], root: Path,
                  mode: str | None = None) -> str:
    if not findings:
        return ""
    head = f"**Lint**{f' (`--lint {mode}`)' if mode else ''}: {len(findings)} finding(s)"
    rows = ["| revision | file | rule | message |", "| --- | --- | --- | --- |"]
    for f in findings:
        where = f" (SQL line {f['line']})" if f.get("line") else ""
        rows.append(f"| {_code(f.get('revision'))} | {_code(relative(f.get('path'), root))} "
                    f"| {_code(f.get('rule'))} | {_cell(str(f.get('message')) + where)} |")
    return "\n".join([head, "", *rows, ""]) + "\n"


def summary_markdown(run: Mapping[str, Any], plan: Mapping[str, Any] | None,
                     findings: Sequence[Mapping[str, Any]], root: Path,
                     artifacts: str | None = None) -> str:
    """The run as Markdown for the job's summary page."""
    migrations = list(run.get("migrations") or [])
    applied = sum(1 for m in migrations if m.get("outcome") == "applied")
    seconds = _seconds(run)
    facts = [f"{applied} applied", f"{len(run.get('pending') or [])} not run"]
    if seconds is not None:
        facts.append(f"{seconds:.2f} s")
    facts += [f"target {_code(run.get('target'))}", f"database {_code(run.get('database_url'))}",
              f"run {_code(run.get('run_id'))}"]
    parts = [f"### safe-migrate upgrade: {run.get('outcome')} (exit {run.get('exit_code')})",
             "", " · ".join(facts), ""]
    if migrations:
        parts += ["| | revision | file | transactional | attempts | duration | outcome |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in migrations:
            outcome = str(m.get("outcome"))
            if outcome in _FAILED:
                outcome += f": {_error_text(m.get('error'), '; ')}"
            parts.append(
                f"| {_ICONS.get(str(m.get('outcome')), '')} | {_code(m.get('revision'))} "
                f"| {_code(relative(m.get('path'), root))} "
                f"| {'yes' if m.get('transactional', True) else 'no'} | {m.get('attempts', '')} "
                f"| {_ms(m.get('duration_ms'))} | {_cell(outcome)} |")
        parts.append("")
    elif run.get("exit_code") == 0:
        parts += ["Nothing to do: the database was already at the target.", ""]
    lint = lint_markdown(findings, root)
    if lint:
        parts += [lint.rstrip("\n"), ""]
    if run.get("error"):
        parts += [f"**Error:** {_cell(run['error'])}", ""]
    if plan:
        parts += [f"**Recovery plan** ({_code(plan.get('status'))}): what to run next", "",
                  "```sh", *[str(c) for c in plan.get("commands") or []], "```", ""]
    if artifacts:
        parts += [f"Artifacts: {_code(artifacts)}", ""]
    return "\n".join(parts) + "\n"


# -- the hooks --------------------------------------------------------------------------------

def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as summary:  # other steps' summaries stay
        summary.write(text)


def _root(env: Mapping[str, str]) -> Path:
    return Path(env.get("GITHUB_WORKSPACE") or os.getcwd())


def report_upgrade(directory: Path, findings: list[dict[str, Any]] | None, *,
                   env: Mapping[str, str] = os.environ, out: TextIO | None = None) -> None:
    """After an upgrade: its summary (from run.json and, on exit 5/6, recovery-plan.json in
    the run's artifacts directory) and its failure annotations. No-op outside GitHub Actions;
    never raises (the run's exit code is what matters)."""
    if not enabled(env):
        return
    try:
        run = json.loads((directory / "run.json").read_text())
        plan = None
        if run.get("exit_code") in (5, 6) and (directory / "recovery-plan.json").is_file():
            plan = json.loads((directory / "recovery-plan.json").read_text())
        root = _root(env)
        for line in run_annotations(run, plan, root):
            print(line, file=out or sys.stdout)
        if env.get("GITHUB_STEP_SUMMARY"):
            _append(env["GITHUB_STEP_SUMMARY"],
                    summary_markdown(run, plan, findings or [], root, str(directory)))
    except Exception as exc:  # noqa: BLE001 - a summary must never change the outcome
        get_logger().warning("github.summary_failed", error=f"{type(exc).__name__}: {exc}")


def report_lint(findings: list[dict[str, Any]], mode: str, *,
                env: Mapping[str, str] = os.environ, out: TextIO | None = None) -> None:
    """Lint findings as annotations, as soon as they are known; when they refuse the run
    (`--lint error`), the summary too: the run stops before writing its own."""
    if not enabled(env) or not findings:
        return
    try:
        root = _root(env)
        for line in lint_annotations(findings, error=mode == "error", root=root):
            print(line, file=out or sys.stdout)
        if mode == "error" and env.get("GITHUB_STEP_SUMMARY"):
            _append(env["GITHUB_STEP_SUMMARY"],
                    "### safe-migrate upgrade: refused by lint (exit 3)\n\n"
                    + lint_markdown(findings, root, mode))
    except Exception as exc:  # noqa: BLE001 - annotations must never change the outcome
        get_logger().warning("github.summary_failed", error=f"{type(exc).__name__}: {exc}")
