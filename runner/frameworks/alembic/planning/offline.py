"""Offline (`--sql`) SQL of a revision range, through the project's env.py as alembic does it."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext

from runner.frameworks.alembic.project import Project
from runner.logging import get_logger, quiet_alembic

# One header per revision; a merge's reads "-- Running upgrade a, b -> m".
RUNNING = re.compile(r"^-- Running (?:upgrade|downgrade) (.*?) -> (\S+)\s*$", re.M)


def offline_sql(project: Project, revision_range: str, *, downgrade: bool = False,
                buffer: io.StringIO | None = None, log: Any = None,
                load: Callable[[], object] | None = None) -> str:
    """`alembic upgrade --sql START:END` (or downgrade), as alembic's `command` module runs it
    but on the project's already loaded ScriptDirectory: `command.upgrade` would build a new one
    and import every revision file again (0.5 s at 2,000 revisions).

    Raises whatever env.py raises offline (e.g. a migration that reads data); the SQL rendered
    until then is in `buffer` when one is given. What env.py and the migrations print() goes
    to `offline.output` events, never to stdout (plan's JSON is there).
    """
    buffer = buffer if buffer is not None else io.StringIO()
    # A Config of its own: the SQL goes to our buffer, not to the user's stdout.
    config = Config(file_=project.config.config_file_name,
                    ini_section=project.config.config_ini_section,
                    output_buffer=buffer, cmd_opts=project.config.cmd_opts)
    for key, value in project.config.get_section(project.config.config_ini_section, {}).items():
        config.set_main_option(key, value.replace("%", "%%"))
    if not config.get_main_option("sqlalchemy.url"):
        # No URL given (the example ships none): offline SQL needs the dialect only.
        config.set_main_option("sqlalchemy.url", "postgresql://")
    script = project.script
    start, end = revision_range.split(":", 1) if ":" in revision_range else (None, revision_range)

    def steps(rev: Any, _context: Any) -> Any:
        if load is not None:  # where alembic builds the revision graph (History.load)
            load()
        if downgrade:
            return script._downgrade_revs(end, rev)
        return script._upgrade_revs(end, rev)

    env = EnvironmentContext(config, script, fn=steps, as_sql=True, starting_rev=start,
                             destination_rev=end)
    configure = env.configure

    def quiet_configure(*args: Any, **kwargs: Any) -> None:
        quiet_alembic()  # after env.py's fileConfig(): "Generating static SQL" is no event
        configure(*args, **kwargs)

    env.configure = quiet_configure  # type: ignore[method-assign]
    printed = _Printed(buffer)
    try:
        with env, contextlib.redirect_stdout(printed):
            script.run_env()
    finally:
        printed.log(log or get_logger())
    return buffer.getvalue()


class _Printed(io.TextIOBase):
    """stdout while env.py runs offline: each print() kept under the revision rendering then
    (the last `-- Running` header in the SQL so far; None before the first)."""

    _MAX_CHARS = 2000  # per revision: an event, not a transcript

    def __init__(self, sql: io.StringIO) -> None:
        super().__init__()
        self.sql = sql
        self.by_revision: dict[str | None, list[str]] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.by_revision.setdefault(_last_header(self.sql.getvalue()), []).append(text)
        return len(text)

    def log(self, log: Any) -> None:
        for revision, chunks in self.by_revision.items():
            text = "".join(chunks).strip()
            if text:
                log.info("offline.output", revision=revision, output=text[:self._MAX_CHARS],
                         truncated=len(text) > self._MAX_CHARS)


def _last_header(sql: str) -> str | None:
    start = sql.rfind("-- Running ")
    if start < 0:
        return None
    match = RUNNING.match(sql, start)
    return match.group(2) if match else None


def downgrade_template(project: Project, revision: str,
                       down_revision: str | list[str] | None) -> str:
    """The failed revision's own offline downgrade SQL, for a person to review (never run)."""
    if isinstance(down_revision, list):
        return f"-- {revision} is a merge revision: write its downgrade by hand"
    try:
        return offline_sql(project, f"{revision}:{down_revision or 'base'}", downgrade=True)
    except Exception as exc:  # noqa: BLE001 - a template is a courtesy, not a must
        return f"-- offline downgrade SQL unavailable: {type(exc).__name__}"


def split_by_revision(sql: str) -> dict[str, str]:
    """{revision: its SQL after its header} from one offline run, keyed by the revision each
    block runs to."""
    parts: dict[str, str] = {}
    matches = list(RUNNING.finditer(sql))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(sql)
        parts[match.group(2)] = sql[match.end():end]
    return parts
