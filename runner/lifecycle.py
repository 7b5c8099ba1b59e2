"""Process-level concerns shared by the commands: signals and the --embedded server."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from runner.settings import Settings

if TYPE_CHECKING:  # alembic: not imported by the Django path, which uses interruptible()
    from runner.project import Project


@contextlib.contextmanager
def interruptible(log: Any) -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set an Event: the runner cancels the running statement (from its monitor
    thread), rolls back, releases the lock and exits 8. Handlers only set the Event."""
    interrupted = threading.Event()

    def handler(signum: int, _: FrameType | None) -> None:
        if not interrupted.is_set():
            log.warning("run.interrupt", signal=signal.Signals(signum).name)
        interrupted.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield interrupted
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def embedded_database(settings: Settings, project: Project, log: Any) -> Iterator[None]:
    """--embedded: a throwaway PostgreSQL for trying the tool; never implied."""
    if not settings.embedded:
        yield
        return
    from runner.embedded import EmbeddedPostgres
    from runner.project import set_url

    with EmbeddedPostgres() as server:
        url = server.url()
        settings.database_url = url
        set_url(project.config, url.render_as_string(hide_password=False))
        log.info("embedded.started", url=url.render_as_string(hide_password=True),
                 pg_dump=str(server.pg_dump))
        if settings.pg_dump is None:
            settings.pg_dump = str(server.pg_dump)
        yield
