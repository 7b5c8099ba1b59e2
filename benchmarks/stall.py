"""2. Production-traffic stall while a migration waits for a lock.

A hot table gets steady traffic from 4 client threads (autocommit SELECT/UPDATE by id, each
query's latency recorded with its start time). A "blocker" session holds ACCESS SHARE on the
table (`BEGIN; SELECT ... FROM hot LIMIT 1;`, left open), e.g. a long report or an idle-in-
transaction application session. 0.5 s later the migration `ALTER TABLE hot ADD COLUMN ...`
starts: it needs ACCESS EXCLUSIVE, queues behind the blocker, and every client query queues
behind *it*. Without lock_timeout the clients stall until the blocker ends; with it, each
attempt stalls them for at most lock_timeout, and safe-migrate retries with jittered backoff.

All traffic goes to the embedded server on 127.0.0.1; every thread has a hard deadline.
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import (
    Config,
    Figure,
    Server,
    Step,
    clean_env,
    fmt_s,
    make_project,
    safe_migrate_argv,
    tool,
    upgrade_core_flags,
    wait_exact,
)

BENCH = "stall"
CLIENTS = 4
ROWS = 10_000
THINK_S = 0.002  # pause between one client's queries (keeps 2 cores from saturating)
WARMUP_S = 1.0
MIGRATION_DELAY_S = 0.5
MARGIN_S = 0.3  # target: worst stall <= lock_timeout + MARGIN_S


@dataclass
class Outcome:
    label: str
    lock_timeout: float | None
    returncode: int | None = None
    migration_s: float = 0.0
    finished_after_blocker: bool = False
    column_added: bool = False
    baseline_p99: float = 0.0
    worst: float = 0.0
    p99: float = 0.0
    queries: int = 0
    errors: int = 0
    attempts: int | None = None
    lock_wait_ms: int | None = None
    stderr_tail: str = ""
    slow: list[tuple[float, float]] = field(default_factory=list)  # (start offset, latency)


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def prepare(server: Server, database: str) -> None:
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE hot (id integer PRIMARY KEY, v integer NOT NULL DEFAULT 0,"
                     " payload text)")
        conn.execute("INSERT INTO hot (id, payload) SELECT g, md5(g::text)"
                     " FROM generate_series(1, %s) AS g", (ROWS,))
        conn.execute("VACUUM ANALYZE hot")


def scenario(server: Server, database: str, argv: list[str], env: dict[str, str], cwd: Path,
             blocker_s: float, out: Outcome) -> None:
    hard_deadline = time.monotonic() + WARMUP_S + blocker_s + 120
    stop = threading.Event()
    samples: list[list[tuple[float, float]]] = [[] for _ in range(CLIENTS)]
    errors = [0] * CLIENTS
    blocker_held = threading.Event()
    times: dict[str, float] = {}

    def client(index: int) -> None:
        rnd = random.Random(index)  # noqa: S311 - workload, not security
        with server.connect(database, application_name=f"bench-client-{index}") as conn:
            conn.execute("SET statement_timeout = '60s'")
            while not stop.is_set() and time.monotonic() < hard_deadline:
                key = rnd.randint(1, ROWS)
                started = time.monotonic()
                try:
                    if rnd.random() < 0.5:
                        conn.execute("SELECT v, payload FROM hot WHERE id = %s", (key,)).fetchone()
                    else:
                        conn.execute("UPDATE hot SET v = v + 1 WHERE id = %s", (key,))
                except psycopg.Error:
                    errors[index] += 1
                samples[index].append((started, time.monotonic() - started))
                time.sleep(THINK_S)

    def blocker() -> None:
        conn = psycopg.connect(server.conninfo(database), application_name="bench-blocker")
        try:
            conn.execute("SELECT id FROM hot LIMIT 1").fetchall()  # opens the transaction
            times["blocker_start"] = time.monotonic()
            blocker_held.set()
            end = times["blocker_start"] + blocker_s
            while time.monotonic() < min(end, hard_deadline):
                time.sleep(0.01)
            conn.commit()
            times["blocker_end"] = time.monotonic()
        finally:
            blocker_held.set()
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    times["clients_start"] = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(WARMUP_S)
    block_thread = threading.Thread(target=blocker, daemon=True)
    block_thread.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        if not blocker_held.wait(15) or "blocker_start" not in times:
            raise RuntimeError("blocker session did not start")
        time.sleep(MIGRATION_DELAY_S)
        with tempfile.TemporaryFile() as err:
            times["migration_start"] = time.monotonic()
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
            out.returncode = wait_exact(proc, max(1.0, hard_deadline - time.monotonic()))
            times["migration_end"] = time.monotonic()
            err.seek(0)
            out.stderr_tail = "\n".join(err.read().decode(errors="replace").splitlines()[-5:])
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
        block_thread.join(timeout=blocker_s + 70)
    if any(t.is_alive() for t in [*threads, block_thread]):
        raise RuntimeError("a client or the blocker did not stop")

    flat = [s for per in samples for s in per]
    base = [lat for start, lat in flat
            if times["clients_start"] + 0.2 <= start < times["blocker_start"]]
    during = [(start, lat) for start, lat in flat
              if times["migration_start"] <= start <= times["migration_end"]]
    lat = [x for _, x in during]
    out.baseline_p99 = _p99(base)
    out.worst = max(lat, default=0.0)
    out.p99 = _p99(lat)
    out.queries = len(flat)
    out.errors = sum(errors)
    out.migration_s = times["migration_end"] - times["migration_start"]
    out.finished_after_blocker = (out.returncode == 0
                                  and times["migration_end"] >= times.get("blocker_end", 1e18))
    out.slow = sorted(((round(s - times["migration_start"], 2), round(x, 3))
                       for s, x in during if x > 0.1), key=lambda p: -p[1])[:10]
    with server.connect(database) as conn:
        row = conn.execute("SELECT count(*) FROM information_schema.columns WHERE"
                           " table_name = 'hot' AND column_name = 'note'").fetchone()
    out.column_added = bool(row and row[0])


def _read_run_json(artifacts: Path, out: Outcome) -> None:
    try:
        data: dict[str, Any] = json.loads((artifacts / "run.json").read_text())
    except (OSError, ValueError):
        return
    migrations = data.get("migrations") or []
    if migrations:
        out.attempts = migrations[0].get("attempts")
        out.lock_wait_ms = migrations[0].get("lock_wait_ms")


def run(server: Server, config: Config) -> list[Figure]:
    blocker_s = config.blocker_seconds
    steps = [Step("add hot.note", "    op.add_column('hot', sa.Column('note', sa.Text))",
                  "    op.drop_column('hot', 'note')")]
    outcomes: list[Outcome] = []
    core = upgrade_core_flags()  # --lint off: squawk is not what this measures
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        root = Path(tmp)
        ini, _ = make_project(root / "project", steps, salt="stall")
        variants: list[tuple[str, float | None, list[str]]] = [
            ("bare alembic (no lock_timeout)", None, [tool("alembic"), "-c", str(ini),
                                                      "upgrade", "head"]),
            (f"safe-migrate --lock-timeout 500ms --lock-retries 20 {' '.join(core)}".strip(), 0.5,
             ["--lock-timeout", "500ms", "--lock-retries", "20", *core]),
            (f"safe-migrate --lock-timeout 2s --lock-retries 20 {' '.join(core)}".strip(), 2.0,
             ["--lock-timeout", "2s", "--lock-retries", "20", *core]),
        ]
        for index, (label, lock_timeout, args) in enumerate(variants):
            artifacts = root / f"art-{index}"
            artifacts.mkdir()
            argv = args if lock_timeout is None else safe_migrate_argv(
                ini, "upgrade", *args, artifacts=artifacts)
            out = Outcome(label, lock_timeout)
            with server.database("stall") as database:
                prepare(server, database)
                scenario(server, database, argv, clean_env(server.url(database)), root,
                         blocker_s, out)
            if lock_timeout is not None:
                _read_run_json(artifacts, out)
            outcomes.append(out)

    figures = []
    for out in outcomes:
        completed = out.returncode == 0 and out.column_added
        detail = (f"worst {fmt_s(out.worst)}, p99 {fmt_s(out.p99)} (baseline p99 "
                  f"{fmt_s(out.baseline_p99)}); migration {fmt_s(out.migration_s)}, "
                  f"exit {out.returncode}, "
                  + ("completed after the blocker ended" if out.finished_after_blocker and completed
                     else "completed" if completed else "DID NOT COMPLETE")
                  + (f", {out.attempts} attempts" if out.attempts is not None else ""))
        if out.lock_timeout is None:
            target, ok = "— (reference: stalls for the blocker's remaining time)", None
            limited = (f"blocker holds ACCESS SHARE {blocker_s:g} s; the queued ACCESS EXCLUSIVE"
                       " request blocks every client until the blocker commits")
        else:
            bound = out.lock_timeout + MARGIN_S
            target = f"worst ≤ lock_timeout + {MARGIN_S:g} s = {fmt_s(bound)}; completes"
            ok = out.worst <= bound and completed
            limited = ("each attempt queues for ≤ lock_timeout, then backs off (jittered "
                       "exponential 0.5 s, 1 s, 2 s, ...); completion is bounded by the blocker "
                       "+ the backoff step in progress")
        figures.append(Figure(BENCH, f"clients' stall: {out.label}", detail, target, ok,
                              limited, data={
                                  "lock_timeout_s": out.lock_timeout, "worst_s": out.worst,
                                  "p99_s": out.p99, "baseline_p99_s": out.baseline_p99,
                                  "migration_s": out.migration_s, "returncode": out.returncode,
                                  "finished_after_blocker": out.finished_after_blocker,
                                  "column_added": out.column_added, "queries": out.queries,
                                  "client_errors": out.errors, "attempts": out.attempts,
                                  "lock_wait_ms": out.lock_wait_ms, "blocker_s": blocker_s,
                                  "slowest_queries": out.slow, "stderr_tail": out.stderr_tail}))
    return figures
