"""structlog setup: configured once by `runner.main`, never at import time."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from runner.urls import mask_text

LogFormat = Literal["json", "console", "auto"]


def _mask_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Last line of defence: no password inside any string field reaches the output."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_text(value)
    return event_dict


class _Ours:
    """Our own structlog setup, apart from structlog's global one: env.py may call
    structlog.configure() (a real one does), and our events must keep their format and
    stream whatever it does."""

    processors: list[structlog.typing.Processor] | None = None
    logger: structlog.WriteLogger | None = None


class JsonLines(io.TextIOBase):
    """sys.stderr under `--log-format json`: what env.py and migrations write there (their
    logging handlers, a structlog of their own, print(file=sys.stderr), warnings) becomes
    one JSON event per line (`event: "output"`), so that stderr stays JSON lines. Lines that
    already are JSON objects pass unchanged. Our own events bypass it (written to the
    stream it wraps)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._partial = ""
        self._lock = threading.Lock()  # a migration's threads may write too

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._emit(self._partial)
                self._partial = ""
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # buffer, errors, ...: the real stream's
        return getattr(self.stream, name)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        if _is_json_object(line):
            self.stream.write(line + "\n")
        else:
            self.stream.write(json.dumps({
                "event": "output", "stream": "stderr", "level": "info",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "text": mask_text(line.rstrip())}) + "\n")
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def _is_json_object(line: str) -> bool:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def configure(log_format: LogFormat = "auto", *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if isinstance(stream, JsonLines):  # configured before (main configures twice)
        stream = stream.stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    others = stream  # where other code's output goes
    if log_format == "json" and stream in (sys.stderr, sys.__stderr__):
        others = sys.stderr = JsonLines(stream)
    elif isinstance(sys.stderr, JsonLines):
        sys.stderr = sys.stderr.stream
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
        renderer,
    ]
    # write() + flush() per event: each line reaches `kubectl logs` as it happens.
    _Ours.processors, _Ours.logger = processors, structlog.WriteLogger(file=stream)
    # The global configuration, for other code's structlog events (a migration's, an
    # env.py that does not configure structlog): the same pipeline, on the same stream.
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=others),
        cache_logger_on_first_use=False,
    )
    quiet_alembic()


def quiet_alembic() -> None:
    """Alembic's own INFO lines ("Running upgrade a -> b") would duplicate our events and break
    the JSON lines on stderr. env.py's fileConfig() turns them back on: every env.py run calls
    this again from its configure() wrapper."""
    logging.getLogger("alembic").setLevel(logging.WARNING)


def get_logger() -> Any:
    """Our logger: bound to our own configuration once `configure()` ran, so that an env.py
    calling structlog.configure() changes nothing of ours. Before that (tests that run
    main(configure_logging=False) under structlog.testing.capture_logs()), structlog's
    global configuration, which capture_logs() can see."""
    if _Ours.processors is None or _Ours.logger is None:
        return structlog.get_logger("safe-migrate")
    return structlog.wrap_logger(
        _Ours.logger, processors=_Ours.processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        context_class=dict, cache_logger_on_first_use=False)
