"""Run the fleet's targets: in this process (`--parallel 1`) or in N forked worker processes,
with the canary stage and --max-failures deciding what starts.

Why processes, not threads: alembic's `context` and `op` are module-level proxies that one
EnvironmentContext installs at a time, so two env.py runs in one process would clobber each
other. Each worker is forked once the project and its revision map are loaded (copy-on-write:
loaded once for the fleet) and runs its targets one after another, in process, through the
single-database upgrade. The parent only schedules: it hands a worker one target at a time over
a pipe, so it decides, target by target, whether anything more starts.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from runner.errors import ExitCode

Result = dict[str, Any]  # name, outcome, exit_code, ... (one fleet.json entry)
RunOne = Callable[[int, threading.Event], Result]

NOT_STARTED = "not-started"
# Why targets were left unstarted (fleet.json's stopped_by).
BY_CANARY, BY_MAX_FAILURES, BY_INTERRUPT = "canary-failed", "max-failures", "interrupted"


@dataclass(frozen=True)
class Policy:
    parallel: int = 1
    canary: int = 0  # the first K targets must all succeed before the rest start
    max_failures: int | None = None  # stop starting new targets after this many failures


class Executor(Protocol):
    capacity: int

    def submit(self, index: int) -> None: ...

    def next_result(self) -> tuple[int, Result]: ...


class Inline:
    """--parallel 1: every target in this process, in order."""

    capacity = 1

    def __init__(self, run: RunOne, interrupted: threading.Event) -> None:
        self.run = run
        self.interrupted = interrupted
        self.queued: deque[int] = deque()

    def submit(self, index: int) -> None:
        self.queued.append(index)

    def next_result(self) -> tuple[int, Result]:
        index = self.queued.popleft()
        return index, self.run(index, self.interrupted)


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess,
                 conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: int | None = None


class Processes:
    """N forked workers, each running one target at a time. A worker that dies (SIGKILL, the
    OOM killer) reports its target as exit 1 and is replaced."""

    def __init__(self, run: RunOne, workers: int,
                 worker_signals: Callable[[], contextlib.AbstractContextManager[threading.Event]],
                 on_exit: Callable[[], None] | None = None) -> None:
        self.run = run
        self.on_exit = on_exit  # in each worker, once it has nothing more to run
        self.capacity = workers
        self.worker_signals = worker_signals
        self.context = multiprocessing.get_context("fork")
        self.workers = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=self._serve, args=(child,), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _serve(self, conn: multiprocessing.connection.Connection) -> None:
        # What the parent loaded (the project, the revision map) stays: out of the collector's
        # sight, it is never traversed again (~1 ms a target) nor copied by touching it.
        gc.freeze()
        try:
            with self.worker_signals() as interrupted:
                while True:
                    try:
                        index = conn.recv()
                    except EOFError:
                        return
                    if index is None:
                        return
                    conn.send((index, self.run(index, interrupted)))
        finally:
            if self.on_exit is not None:
                self.on_exit()

    def submit(self, index: int) -> None:
        worker = next(w for w in self.workers if w.task is None)
        worker.task = index
        worker.conn.send(index)

    def next_result(self) -> tuple[int, Result]:
        while True:
            busy = [w for w in self.workers if w.task is not None]
            ready = multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                if worker.conn in ready:
                    try:
                        index, result = worker.conn.recv()
                    except EOFError:
                        continue  # it died: its sentinel says so
                    worker.task = None
                    return index, result
            for worker in busy:
                if worker.process.sentinel in ready:
                    return self._died(worker)

    def _died(self, worker: _Worker) -> tuple[int, Result]:
        worker.process.join()
        index, worker.task = worker.task, None
        assert index is not None
        self.workers[self.workers.index(worker)] = self._start()
        code = worker.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return index, {"exit_code": int(ExitCode.INTERNAL), "outcome": "internal-error",
                       "error": f"its worker process died ({how}); see the ledger "
                                "(`safe-migrate status`) for what it left"}

    def interrupt(self, signum: int) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                if worker.process.pid is not None:
                    os.kill(worker.process.pid, signum)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


@contextlib.contextmanager
def forwarding_signals(processes: Processes, stopping: threading.Event,
                       log: Any) -> Iterator[None]:
    """The parent's SIGTERM/SIGINT: start nothing more, and pass it on to the workers (the
    running targets are cancelled and rolled back there: exit 8). Kubernetes signals PID 1
    only."""

    def handler(signum: int, _: FrameType | None) -> None:
        if not stopping.is_set():
            log.warning("fleet.interrupt", signal=signal.Signals(signum).name)
        stopping.set()
        processes.interrupt(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def schedule(count: int, executor: Executor, policy: Policy, stopping: threading.Event,
             on_result: Callable[[int, Result], None]) -> tuple[dict[int, Result], str | None]:
    """Run targets 0..count-1 in order, at most executor.capacity at a time. The canary stage
    (the first K) must succeed entirely before the rest start. Returns every target's result
    (the unstarted ones marked not-started) and why the run stopped early, if it did."""
    results: dict[int, Result] = {}
    failures = 0
    stopped_by: str | None = None

    def stop_reason() -> str | None:
        if stopping.is_set():
            return BY_INTERRUPT
        if policy.max_failures is not None and failures >= policy.max_failures:
            return BY_MAX_FAILURES
        return None

    def stage(indices: list[int]) -> None:
        nonlocal failures, stopped_by
        queue, running = deque(indices), 0
        while queue or running:
            while queue and running < executor.capacity and stopped_by is None:
                stopped_by = stop_reason()
                if stopped_by is None:
                    executor.submit(queue.popleft())
                    running += 1
            if not running:
                return
            index, result = executor.next_result()
            running -= 1
            results[index] = result
            failures += result["exit_code"] != 0
            on_result(index, result)

    canary = list(range(min(policy.canary, count)))
    stage(canary)
    if stopped_by is None and any(results[i]["exit_code"] != 0 for i in canary):
        stopped_by = BY_CANARY
    if stopped_by is None:
        stage(list(range(len(canary), count)))
    for index in range(count):
        if index not in results:
            results[index] = {"outcome": NOT_STARTED, "exit_code": None,
                              "not_started_because": stopped_by}
    return results, stopped_by
