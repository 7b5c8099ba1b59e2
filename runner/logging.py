"""structlog setup: configured once by `runner.main`, never at import time."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal


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


def configure(log_format: LogFormat = "auto", *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:  # for people: sentences, rich's styles on a terminal (runner.console)
        from runner.console import ConsoleRenderer

        renderer = ConsoleRenderer(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # write() + flush() per event: each line reaches `kubectl logs` as it happens.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    quiet_alembic()


def quiet_alembic() -> None:
    """Alembic's own INFO lines ("Running upgrade a -> b") would duplicate our events and break
    the JSON lines on stderr. env.py's fileConfig() turns them back on: every env.py run calls
    this again from its configure() wrapper."""
    logging.getLogger("alembic").setLevel(logging.WARNING)


def get_logger() -> Any:
    return structlog.get_logger("safe-migrate")
