"""Process-level concerns shared by the commands: signals and the --embedded server."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from runner.settings import Settings
from runner.urls import mask

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


@contextlib.contextmanager
def interruptible(log: Any) -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set an Event: the runner cancels the running statement (from its monitor
    thread), rolls back, releases the lock and exits 8. Handlers only set the Event.

    A Python signal handler runs in the main thread between bytecodes, so never while that
    thread waits inside a C driver call (psycopg2's PQexec, a 60 s statement): the Event
    would be set only once the statement ended. The C-level handler does write the signal
    number to the wakeup fd at once, whatever the main thread does: a thread reading it sets
    the Event, and the monitor cancels the statement."""
    interrupted = threading.Event()

    def handler(signum: int, _: FrameType | None) -> None:
        if not interrupted.is_set():
            log.warning("run.interrupt", signal=signal.Signals(signum).name)
        interrupted.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _wakeup_watch(handler):
            yield interrupted
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _wakeup_watch(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # set_wakeup_fd is the main thread's; handlers run there anyway
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for signum in os.read(read_end, 64):
                if signum in (signal.SIGTERM, signal.SIGINT) and not stop.is_set():
                    handler(signum, None)

    thread = threading.Thread(target=watch, name="safe-migrate-signals", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        stop.set()
        os.write(write_end, b"\0")  # wakes the reader, which sees `stop`
        thread.join(timeout=1)
        os.close(write_end)
        os.close(read_end)


@contextlib.contextmanager
def embedded_database(settings: Settings, log: Any,
                      point: Callable[[URL], None] | None = None) -> Iterator[None]:
    """--embedded: a throwaway PostgreSQL for trying the tool; never implied. Its URL becomes
    the run's --database-url; `point` hands it to the framework's own configuration too."""
    if not settings.embedded:
        yield
        return
    from runner.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        url = server.url()
        settings.database_url = url
        if point is not None:
            point(url)
        log.info("embedded.started", url=mask(url), pg_dump=str(server.pg_dump))
        if settings.pg_dump is None:
            settings.pg_dump = str(server.pg_dump)
        yield
