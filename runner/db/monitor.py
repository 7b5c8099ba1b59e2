"""A watcher thread beside the running migration.

While a migration runs it records who blocks it (for `migration.retry` and the lock-wait
figures in run.json), and once the run is interrupted it cancels the migration's current
statement with pg_cancel_backend. It uses its own connection: the signal handler only sets
an Event, so nothing re-enters a connection that the main thread may be using.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from runner.db import catalog


def sample_interval(lock_timeout: float) -> float:
    """How often to look for blockers: several times within one lock wait, so that a short
    `--lock-timeout` (200ms) is still seen waiting before it gives up; never more than 10/s."""
    if lock_timeout <= 0:
        return 0.1
    return min(0.1, max(0.02, lock_timeout / 5))


class Monitor:
    def __init__(self, conn: psycopg.Connection[Any], interrupted: threading.Event, *,
                 interval: float = 0.1) -> None:
        self.conn = conn
        self.interrupted = interrupted
        self.interval = interval
        self._pid: int | None = None
        self._since = 0.0  # when the watched migration started
        self._state = threading.Lock()
        self.blockers: list[catalog.Session] = []
        # The latest sample only ([] once the lock is granted): the console's live status line.
        self.waiting: list[catalog.Session] = []
        self.lock_wait_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="safe-migrate-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        """Still querying on its connection (stop() gave up waiting for it)."""
        return self._thread.is_alive()

    def watch(self, pid: int) -> None:
        """A migration started on backend `pid`: begin watching it."""
        with self._state:
            self._pid = pid
            self._since = time.monotonic()
            self.blockers = []
            self.waiting = []
            self.lock_wait_s = 0.0

    def unwatch(self) -> tuple[list[catalog.Session], float]:
        with self._state:
            self._pid = None
            self.waiting = []
            return list(self.blockers), self.lock_wait_s

    def xact_committed(self, xid: str) -> bool:
        return catalog.xact_status(self.conn, xid) == "committed"

    def _run(self) -> None:
        cancelled_at = 0.0
        while not self._stop.wait(self.interval):
            with self._state:
                pid, since = self._pid, self._since
            if pid is None:
                continue
            try:
                if self.interrupted.is_set():
                    if time.monotonic() - cancelled_at > 0.5:
                        cancelled_at = time.monotonic()
                        self.conn.execute("SELECT pg_cancel_backend(%s)", (pid,))
                    continue
                if time.monotonic() - since < self.interval:
                    continue  # most steps end within one interval: never query for them
                blockers = catalog.blocking_sessions(self.conn, pid)
            except psycopg.Error:
                continue  # the monitor is best effort; the migration's own errors decide
            with self._state:
                if self._pid == pid:
                    self.waiting = blockers
                    if blockers:
                        self.blockers = blockers
                        self.lock_wait_s += self.interval
