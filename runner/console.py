"""The console for people (`--log-format console`, or auto on a terminal).

The same structured events as the JSON lines, rendered as sentences: a header with the run id
once (not on every line), one line per migration with its message (the revision's docstring),
lock-race failures and retries as warnings, and a closing summary (outcome, applied, total
time, artifacts). rich styles the lines; it adds no colour when the stream is not a terminal,
or under NO_COLOR. JSON mode never imports this module's renderer (nor rich).

On a terminal (the stream is a TTY and TERM is not `dumb`), a live status line (rich.live)
sits under the lines while migrations run: the running revision and its elapsed time, while it
waits on a lock the blocking pid and query (the Monitor's latest sample), and between attempts
the retry countdown. It is erased when the run ends. NO_COLOR removes its colour, not the line:
NO_COLOR is about colour, and the line is plain text redrawn in place. Off a terminal (a pipe,
a CI log) there is no live line, and in JSON mode none of this exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from runner.db.failures import LOCK_RACE
from runner.urls import mask_text

#: Fields every event carries, or that the console shows elsewhere: never repeated per line.
_NOISE = ("event", "level", "timestamp", "run_id", "logger")
_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}

_describe: Callable[[str], str | None] | None = None
_waiting: Callable[[], list[Any]] | None = None
#: How often the live status line is redrawn (and the blockers read), per second.
_LIVE_REFRESH = 4


def revision_messages(describe: Callable[[str], str | None]) -> None:
    """How to find a revision's message (its docstring); the command that loaded the history
    says, so that the console can show `0002 add display name`, not only `0002`."""
    global _describe  # presentation state, set once per command
    _describe = describe


def waiting_on(source: Callable[[], list[Any]] | None) -> None:
    """Who the running migration waits for right now (catalog.Session-like objects: `pid`,
    `application_name`, `query`), for the live status line; upgrade says, once connected.
    Called only by the live line's refresh (4 times a second, on a terminal): never per event."""
    global _waiting  # presentation state, set once per run
    _waiting = source


def live_allowed(stream: Any) -> bool:
    """A live status line only on a real terminal (not a pipe, not TERM=dumb)."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM", "") not in ("dumb", "unknown")


def _message(revision: Any) -> str:
    if _describe is None or not isinstance(revision, str):
        return ""
    try:
        doc = _describe(revision)
    except Exception:  # noqa: BLE001 - a label is a courtesy: never fail an event for it
        return ""
    return " ".join((doc or "").split())


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{round(value)} ms"


def _shown_path(path: str) -> str:
    """A path as a person types it: relative to the working directory when under it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


def _where_and_why(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Under a failure's line: the migration's file:line that raised, PostgreSQL's DETAIL and
    HINT (runner.db.failures.error_info)."""
    parts: list[tuple[str, str]] = []
    if event.get("file"):
        line = f":{event['line']}" if event.get("line") else ""
        parts.append((f"\n    at {_shown_path(str(event['file']))}{line}", "bold"))
    for key, label in (("detail", "DETAIL"), ("hint", "HINT")):
        if event.get(key):
            parts.append((f"\n    {label}: {event[key]}", ""))
    return parts


def _fields(event: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    return " ".join(f"{key}={value}" for key, value in event.items()
                    if key not in _NOISE and key not in skip and value not in (None, [], {}))


class StatusLine:
    """The live status line's state, drawn by rich.live on its own thread (`__rich__`)."""

    def __init__(self) -> None:
        self.revision: str | None = None  # None: no migration running, nothing drawn
        self.started = 0.0
        self.retry_at: float | None = None  # between attempts: when the next one starts
        self.attempt = 0
        self.blockers: list[dict[str, Any]] = []  # migration.retry's, for the countdown
        self._spinner: Any = None

    def running(self, revision: str) -> None:
        self.revision, self.started, self.retry_at = revision, time.monotonic(), None

    def retrying(self, revision: str, sleep_s: float, attempt: int,
                 blockers: list[dict[str, Any]]) -> None:
        self.revision, self.retry_at = revision, time.monotonic() + sleep_s
        self.attempt, self.blockers = attempt, blockers

    def idle(self) -> None:
        self.revision = None

    def text(self) -> str:
        """The line as plain text (masked): what the terminal shows after the spinner."""
        if self.revision is None:
            return ""
        label = " ".join(part for part in (self.revision, _message(self.revision)) if part)
        now = time.monotonic()
        if self.retry_at is not None:
            who = _who(self.blockers)
            return mask_text(f"{label} · attempt {self.attempt + 1} in "
                             f"{max(self.retry_at - now, 0):.1f} s"
                             + (f" · lost a lock race to {who}" if who else ""))
        line = f"{label} · {now - self.started:.1f} s"
        blockers = _waiting() if _waiting is not None else []
        if blockers:
            line += f" · waiting for a lock held by {_who(blockers)}"
        return mask_text(line)

    def __rich__(self) -> Any:
        from rich.spinner import Spinner
        from rich.text import Text

        text = self.text()
        if not text:
            return Text("")
        if self._spinner is None:
            self._spinner = Spinner("dots", style="cyan")
        frame = self._spinner.render(time.monotonic())
        line = Text.assemble(frame if isinstance(frame, Text) else "", " ", text)
        line.no_wrap, line.overflow = True, "ellipsis"  # one line, whatever its width
        return line


def _who(blockers: list[Any]) -> str:
    """`pid 123 (psql): LOCK TABLE ...` for the first blocker, and how many more."""
    if not blockers:
        return ""
    first = blockers[0]

    def get(key: str) -> Any:
        return first.get(key) if isinstance(first, dict) else getattr(first, key, None)

    app = f" ({get('application_name')})" if get("application_name") else ""
    query = " ".join(str(get("query") or "").split())
    more = f" (+{len(blockers) - 1} more)" if len(blockers) > 1 else ""
    return f"pid {get('pid')}{app}{': ' + query if query else ''}{more}"


class ConsoleRenderer:
    """The last structlog processor in console mode: an event in, a line (or a few) out."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console  # here: JSON mode never pays for rich's import

        # soft_wrap: a long line stays one line (a CI log is not a terminal's width).
        self.console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False)
        self.stream = stream
        self.live_allowed = live_allowed(stream)
        self.live: Any = None  # rich.live.Live while migrations run, on a terminal
        self.status = StatusLine()
        self.started: float | None = None
        self.artifacts: str | None = None
        self.non_transactional: set[str] = set()
        self.renderers: dict[str, Callable[[EventDict], Any]] = {
            "run.start": self._run_start, "database": self._database,
            "preflight.ok": self._preflight_ok, "migration.start": self._migration_start,
            "migration.done": self._migration_done, "migration.failed": self._migration_failed,
            "migration.retry": self._migration_retry, "lock.waiting": self._lock_waiting,
            "lock.acquired": self._lock_acquired, "lock.released": self._drop,
            "lint.finding": self._lint_finding, "recovery.plan": self._recovery_plan,
            "run.done": self._run_done, "schema.snapshot": self._snapshot,
            "status": self._drop,  # status prints its own report on stdout
            "lint.done": self._lint_done, "verification.ok": self._verification_ok,
            "embedded.started": self._embedded,
        }

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> str:
        name = str(event.get("event"))
        # A fleet's target: its lines say whose they are (workers interleave), and no live
        # line (several processes would draw over each other).
        fleet_target = event.pop("fleet_target", None)
        if self.live_allowed and fleet_target is None:
            self._follow(name, event)
        render = self.renderers.get(name, self._generic)
        text = render(event)
        if text is None:
            raise structlog.DropEvent
        with self.console.capture() as captured:
            self.console.print(text)
        # Nested fields (a blocker's query) escape runner.logging's mask: mask the line too.
        line = mask_text(captured.get().rstrip("\n"))
        if fleet_target is not None:
            line = "\n".join(f"[{fleet_target}] {part}" for part in line.split("\n"))
        if self.live is not None:
            # Above the live line, through rich (a raw write would garble it).
            from rich.text import Text

            self.live.console.print(Text.from_ansi(line))
            raise structlog.DropEvent
        return line

    # -- the live status line (a terminal only) ---------------------------------------------
    def _follow(self, name: str, event: EventDict) -> None:
        revision = str(event.get("revision"))
        if name == "migration.start":
            self.status.running(revision)
            self._start_live()  # drawn at the next refresh (a fast step seldom shows)
            return
        if name == "migration.retry":
            blockers = [b for b in event.get("blockers") or [] if isinstance(b, dict)]
            sleep_s = event.get("sleep_s")
            self.status.retrying(revision, float(sleep_s) if isinstance(sleep_s, (int, float))
                                 else 0.0, int(event.get("attempt") or 0), blockers)
        elif name in ("migration.done", "migration.failed"):
            self.status.idle()
        elif name == "run.done":
            self.stop_live()
            return
        else:
            return
        if self.live is not None:
            # Redraw now: the line printed next re-renders the live line as last drawn, which
            # would show the finished step's state (its blocker) for up to a refresh interval.
            self.live.refresh()

    def _start_live(self) -> None:
        if self.live is not None:
            return
        import atexit

        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, highlight=False, soft_wrap=True, emoji=False)
        self.live = Live(get_renderable=self.status.__rich__, console=console,
                         refresh_per_second=_LIVE_REFRESH, transient=True,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()
        atexit.register(self.stop_live)  # a crash must not leave the cursor hidden

    def stop_live(self) -> None:
        """Erase the live line and give the terminal back (idempotent)."""
        live, self.live = self.live, None
        if live is not None:
            self.status.idle()
            live.stop()

    # -- one per event ---------------------------------------------------------------------
    def _text(self, *parts: tuple[str, str] | str) -> Any:
        from rich.text import Text

        return Text.assemble(*parts)

    def _drop(self, _: EventDict) -> None:
        return None

    def _generic(self, event: EventDict) -> Any:
        level = str(event.get("level", "info"))
        mark = {"error": "✖ ", "warning": "! "}.get(level, "  ")
        return self._text((f"{mark}{event.get('event')}", _STYLES.get(level, "")),
                          (f" {_fields(event)}".rstrip(), "dim"))

    def _run_start(self, event: EventDict) -> Any:
        self.started = time.monotonic()
        self.artifacts = event.get("artifacts_dir")
        return self._text((f"safe-migrate {event.get('version', '')} "
                           f"{event.get('command', '')}", "bold"),
                          f" → {event.get('target', '')}",
                          (f"  (run {event.get('run_id')}, {event.get('config')})", "dim"))

    def _database(self, event: EventDict) -> Any:
        version = f", PostgreSQL {event['server_version']}" if event.get("server_version") else ""
        return self._text("  database ", (str(event.get("url")), "cyan"),
                          (f" ({event.get('version_table')}{version})", "dim"))

    def _preflight_ok(self, event: EventDict) -> Any:
        current = ", ".join(event.get("current") or []) or "base"
        pending = event.get("pending")
        what = "nothing to do" if pending == 0 else f"{pending} pending"
        return self._text(f"  {current} → {event.get('target')}: ", (what, "bold"))

    def _lock_acquired(self, event: EventDict) -> Any:
        waited = event.get("waited_ms") or 0
        return self._text(("  advisory lock acquired", "dim"),
                          (f" after {_ms(waited)}" if waited >= 1000 else "", "dim"))

    def _lock_waiting(self, event: EventDict) -> Any:
        holder = (f"pid {event.get('holder_pid')} ({event.get('holder_application_name')})"
                  if event.get("holder_pid") else "another session")
        return self._text(("! ", "yellow"), f"waiting for the advisory lock held by {holder} "
                          f"for {_ms(event.get('waited_ms'))}")

    def _snapshot(self, event: EventDict) -> Any:
        return self._text((f"  schema snapshot {event.get('which', '')} "
                           f"({_ms(event.get('duration_ms'))})", "dim"))

    def _label(self, event: EventDict) -> list[tuple[str, str] | str]:
        revision = str(event.get("revision"))
        message = _message(revision)
        return [(revision, "bold"), f" {message}" if message else ""]

    def _migration_start(self, event: EventDict) -> None:
        # Not a line of its own (one line per migration): what its closing line says.
        if event.get("transactional") is False:
            self.non_transactional.add(str(event.get("revision")))

    def _migration_done(self, event: EventDict) -> Any:
        attempts = event.get("attempts") or 1
        extra = f", {attempts} attempts" if attempts > 1 else ""
        if str(event.get("revision")) in self.non_transactional:
            extra += ", not transactional"
        return self._text(("✔ ", "green"), *self._label(event),
                          (f"  {_ms(event.get('duration_ms'))}{extra}", "dim"))

    def _migration_failed(self, event: EventDict) -> Any:
        state = event.get("sqlstate")
        why = f"SQLSTATE {state}: {event.get('message')}" if state else str(event.get("message"))
        blockers = event.get("blocking_pids") or []
        by = f" (blocked by pid {', '.join(map(str, blockers))})" if blockers else ""
        if state in LOCK_RACE and not event.get("partial"):
            # Expected under load: upgrade retries it (migration.retry follows) or gives up.
            return self._text(("! ", "yellow"), *self._label(event),
                              (f"  attempt {event.get('attempt')} lost a lock race: {why}{by}",
                               "yellow"))
        partial = "  PARTIALLY APPLIED" if event.get("partial") else ""
        return self._text(("✖ ", "bold red"), *self._label(event),
                          (f"  failed after {_ms(event.get('duration_ms'))}: {why}{by}{partial}",
                           "red"), *_where_and_why(event))

    def _migration_retry(self, event: EventDict) -> Any:
        blockers = event.get("blockers") or []
        who = "; ".join(f"pid {b.get('pid')}: {b.get('query')}" for b in blockers
                        if isinstance(b, dict))
        return self._text(("! ", "yellow"), *self._label(event),
                          (f"  retry in {event.get('sleep_s')} s", "yellow"),
                          (f" (blocked by {who})" if who else "", "dim"))

    def _lint_done(self, event: EventDict) -> Any:
        return self._text((f"  lint: {event.get('findings')} finding(s) in "
                           f"{event.get('revisions')} pending revision(s) "
                           f"({_ms(event.get('duration_ms'))})", "dim"))

    def _verification_ok(self, event: EventDict) -> Any:
        heads = ", ".join(event.get("heads") or []) or "base"
        return self._text((f"  verified: the database is at {heads}", "dim"))

    def _embedded(self, event: EventDict) -> Any:
        return self._text("  embedded PostgreSQL ", (str(event.get("url")), "cyan"),
                          (" (thrown away at the end)", "dim"))

    def _lint_finding(self, event: EventDict) -> Any:
        return self._text(("! ", "yellow"), (f"lint {event.get('revision')} ", "bold"),
                          (str(event.get("rule")), "yellow"), f": {event.get('message')}",
                          (f" ({event.get('path')}, SQL line {event.get('line')})", "dim"))

    def _recovery_plan(self, event: EventDict) -> Any:
        lines = [("✖ ", "bold red"), (f"recovery plan ({event.get('status')})", "bold")]
        if event.get("file"):
            lines.append((f": {event['file']}", ""))
        for command in event.get("commands") or []:
            lines.append((f"\n    {command}", "cyan"))
        return self._text(*lines)

    def _run_done(self, event: EventDict) -> Any:
        code = event.get("exit_code")
        took = f" in {time.monotonic() - self.started:.2f} s" if self.started else ""
        where = f" · artifacts: {self.artifacts}" if self.artifacts else ""
        ok = code == 0
        return self._text(("✔ " if ok else "✖ ", "bold green" if ok else "bold red"),
                          (f"{event.get('outcome')}", "bold"),
                          f"{'' if ok else f' (exit {code})'}: {event.get('applied')} applied"
                          f"{took}", (where, "dim"))
