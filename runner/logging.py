"""structlog setup: configured once by `runner.main`, never at import time."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, Literal, TextIO


def _import_structlog_without_rich() -> None:
    """structlog.dev imports rich, when installed, for its own console renderer and
    tracebacks, which we do not use: 50-90 ms of every start-up, JSON mode included. Only our
    console (runner.console) imports rich, when it renders."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # structlog: `except ImportError`
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402
from structlog.typing import EventDict, WrappedLogger  # noqa: E402

from runner.urls import mask_text  # noqa: E402

LogFormat = Literal["json", "console", "auto"]


def _mask_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Last line of defence: no password inside any string reaches the output, however deep
    (migration.retry's blockers are a list of dicts holding other sessions' queries)."""
    for key, value in event_dict.items():
        event_dict[key] = mask_value(value)
    return event_dict


def mask_value(value: Any) -> Any:
    """`value` with every string inside it masked; dicts, lists and tuples are copied."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {key: mask_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(mask_value(item) for item in value)
    return value


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
    else:  # for people: sentences, rich's styles on a terminal (runner.console)
        from runner.console import ConsoleRenderer

        renderer = ConsoleRenderer(stream)
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


def reset() -> None:
    """Forget configure(): for in-process callers that set logging up and hand it back
    (tests), so that later get_logger() calls follow structlog's global configuration."""
    _Ours.processors = _Ours.logger = None
    if isinstance(sys.stderr, JsonLines):
        sys.stderr = sys.stderr.stream


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
