"""3. Scale: a long revision history, and a schema with thousands of tables.

History (2,000 trivial revisions, 500 in quick mode; each `op.execute("SELECT 1")`):
  - `safe-migrate plan` / `safe-migrate status` vs `alembic heads` (when those commands exist),
  - upgrading one pending revision on a database at head-1 (set by writing alembic_version):
    bare alembic vs safe-migrate with and without the schema diff,
  - in-process: alembic's revision map vs the runner's `load_history` (what the runner adds).
Schema (1k / 2.5k / 5k tables; quick: 200 / 500 / 1k): pg_dump time and its own max RSS
(os.wait4), `normalize` and `diff` times, and the tracemalloc peak of normalize + diff.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from benchmarks.common import (
    Config,
    Figure,
    Rounds,
    Server,
    Step,
    alembic_frozen_exit,
    available_commands,
    clean_env,
    error_message,
    fmt_delta,
    fmt_mib,
    fmt_s,
    make_project,
    median,
    note,
    run_timed,
    safe_migrate_argv,
    stamp,
    tool,
    upgrade_core_flags,
    version_of,
    warm_up,
)
from runner.frameworks.alembic.planning.history import load_history
from runner.schema import snapshot
from runner.urls import libpq_params

BENCH = "scale"
EXCLUDE = [("public", "alembic_version")]
GNU_TIME = Path("/usr/bin/time")


# -- history ----------------------------------------------------------------------------------

def history(server: Server, config: Config) -> list[Figure]:
    n, repeats = config.history_revisions, config.scale_repeats
    steps = [Step(f"no-op {i}", '    op.execute("SELECT 1")') for i in range(n)]
    commands = available_commands()
    core = upgrade_core_flags()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp, \
            server.database("history") as database:
        root = Path(tmp)
        ini, revs = make_project(root / "project", steps, salt="history")
        env = clean_env(server.url(database))
        head_minus_1 = revs[-2]
        stamp(server, database, head_minus_1)

        counter = iter(range(10**6))

        def art() -> Path:
            path = root / f"art-{next(counter)}"
            path.mkdir()
            return path

        # name -> (argv factory, resets the database to head-1 afterwards, check exit code)
        variants: dict[str, tuple[Callable[[], list[str]], bool, bool]] = {
            "alembic heads": (lambda: [tool("alembic"), "-c", str(ini), "heads"], False, True),
            # `alembic heads`, then gc.freeze() before exiting as safe-migrate does: the
            # like-for-like reference for everything but the work itself.
            "alembic heads, frozen exit": (
                lambda: alembic_frozen_exit("-c", str(ini), "heads"), False, True),
            # A reference that, like status, runs env.py and reads the version table.
            "alembic current": (lambda: [tool("alembic"), "-c", str(ini), "current"], False,
                                True),
        }
        if "status" in commands:
            variants["safe-migrate status"] = (
                lambda: safe_migrate_argv(ini, "status"), False, False)
        if "plan" in commands:
            variants["safe-migrate plan"] = (lambda: safe_migrate_argv(ini, "plan"), False, False)
            variants["alembic upgrade --sql base:head"] = (
                lambda: [tool("alembic"), "-c", str(ini), "upgrade", "--sql", "base:head"],
                False, True)
            variants["safe-migrate plan --from base --lint off"] = (
                lambda: safe_migrate_argv(ini, "plan", "--from", "base", "--lint", "off"),
                False, False)
            variants["safe-migrate plan --from base"] = (
                lambda: safe_migrate_argv(ini, "plan", "--from", "base"), False, False)
        variants["alembic upgrade (1 pending)"] = (
            lambda: [tool("alembic"), "-c", str(ini), "upgrade", "head"], True, True)
        variants["safe-migrate upgrade --no-schema-diff (1 pending)"] = (
            lambda: safe_migrate_argv(ini, "upgrade", "--no-schema-diff", *core,
                                      artifacts=art()), True, True)
        variants["safe-migrate upgrade (1 pending)"] = (
            lambda: safe_migrate_argv(ini, "upgrade", *core, artifacts=art()), True, True)
        if core:
            variants["safe-migrate upgrade, defaults (1 pending)"] = (
                lambda: safe_migrate_argv(ini, "upgrade", artifacts=art()), True, False)

        times: dict[str, list[float]] = {name: [] for name in variants}
        codes: dict[str, int] = {}
        errors: dict[str, str] = {}
        warm_up(ini, root)
        for _ in range(repeats):
            for name, (argv, resets, check) in variants.items():
                result = run_timed(argv(), env, cwd=root, check=check)
                codes[name] = result.returncode
                if result.returncode != 0:
                    errors[name] = error_message(result.stderr)
                if resets:
                    if result.returncode == 0:
                        assert version_of(server, database) == revs[-1], f"{name}: not at head"
                    stamp(server, database, head_minus_1)
                times[name].append(result.seconds)
        load = _in_process_history(ini, repeats)

    med = {name: median(values) for name, values in times.items()}

    rounds = Rounds(times)
    ratio, delta = rounds.ratio, rounds.delta

    P_OFF, P_FULL = "safe-migrate plan --from base --lint off", "safe-migrate plan --from base"
    SQL = "alembic upgrade --sql base:head"
    UP_BARE, UP_ON = "alembic upgrade (1 pending)", "safe-migrate upgrade (1 pending)"
    UP_OFF = "safe-migrate upgrade --no-schema-diff (1 pending)"
    heads = med["alembic heads"]
    figures.append(Figure(
        BENCH, f"`alembic heads`, {n} revisions (median of {repeats})", fmt_s(heads),
        limited_by="baseline: Python start-up + alembic importing every revision file",
        data={"revisions": n, "seconds": heads, "runs_s": times["alembic heads"]}))
    for command in ("status", "plan"):
        name = f"safe-migrate {command}"
        if name not in med:
            figures.append(note(BENCH, f"{name} vs `alembic heads`",
                                f"`safe-migrate {command}` does not exist yet "
                                "(not in `safe-migrate --help`): not measured"))
            continue
        vs_heads = ratio(name, "alembic heads")
        figures.append(Figure(
            BENCH, f"{name} (DB at head-1) vs `alembic heads` ({n} revisions)",
            f"{vs_heads:.2f}x ({fmt_s(med[name])}, exit {codes[name]})", "≤ 1.20x",
            vs_heads <= 1.2,
            limited_by=("`alembic heads` never connects: on top of the shared revision-map "
                        "build, psycopg's import (~50 ms), env.py's connection and the catalog "
                        "queries" + ("; plan also renders the pending revision's offline SQL "
                                     "and runs squawk on it" if command == "plan" else "")
                        + "; less the shutdown collection that safe-migrate skips (next row)"),
            data={"ratio": vs_heads, "seconds": med[name], "exit_code": codes[name]}))
        vs_frozen = ratio(name, "alembic heads, frozen exit")
        figures.append(Figure(
            BENCH, f"{name} vs `alembic heads` with the same exit (gc.freeze() before the "
            f"interpreter's shutdown, as safe-migrate does; {n} revisions)",
            f"{vs_frozen:.2f}x (`alembic heads` itself: "
            f"{ratio('alembic heads, frozen exit', 'alembic heads'):.2f}x with that exit)",
            limited_by=("reference: the work alone; the shutdown's full collection over every "
                        "imported revision module is what safe-migrate skips"),
            data={"ratio": vs_frozen}))
        if command == "status":
            current = med["alembic current"]
            figures.append(Figure(
                BENCH, f"safe-migrate status vs `alembic current` ({n} revisions; reference: "
                "both run env.py and read the version table)",
                f"{ratio(name, 'alembic current'):.2f}x ({fmt_s(current)} for alembic current)",
                limited_by="status also reads the lock holders and invalid objects, computes "
                           "the pending revisions and reads the last run's artifacts",
                data={"ratio": ratio(name, "alembic current"), "alembic_current_s": current}))
    if "safe-migrate plan --from base" in med:
        sql = med["alembic upgrade --sql base:head"]
        off_lint = med["safe-migrate plan --from base --lint off"]
        full = med["safe-migrate plan --from base"]
        figures.append(Figure(
            BENCH, f"safe-migrate plan --from base --lint off vs `alembic upgrade --sql "
            f"base:head` ({n} revisions)",
            f"{ratio(P_OFF, SQL):.2f}x ({fmt_s(off_lint)} vs {fmt_s(sql)}, exit "
            f"{codes[P_OFF]})", "≤ 1.20x",
            ratio(P_OFF, SQL) <= 1.2,
            limited_by="same work as alembic --sql (offline SQL of every revision) + per-revision "
                       "bookkeeping (source re-read, marker regexes, JSON/text rendering)",
            data={"ratio": ratio(P_OFF, SQL), "seconds": off_lint,
                  "alembic_sql_s": sql}))
        figures.append(Figure(
            BENCH, f"safe-migrate plan --from base (lint warn, the default), {n} revisions",
            f"{fmt_s(full)} ({ratio(P_FULL, 'alembic heads'):.1f}x `alembic heads`; squawk "
            f"adds {fmt_s(delta(P_FULL, P_OFF))}; exit {codes[P_FULL]})",
            limited_by="squawk lint of every pending revision's SQL dominates the difference",
            data={"seconds": full, "lint_s": delta(P_FULL, P_OFF)}))
    else:
        figures.append(note(BENCH, "safe-migrate plan --from base",
                            "`safe-migrate plan` does not exist yet: not measured"))
    bare = med["alembic upgrade (1 pending)"]
    off = med["safe-migrate upgrade --no-schema-diff (1 pending)"]
    on = med["safe-migrate upgrade (1 pending)"]
    figures.append(Figure(
        BENCH, f"bare `alembic upgrade head`, 1 pending of {n}", fmt_s(bare),
        limited_by="loading the history dominates; the migration itself is ~1 ms",
        data={"seconds": bare, "runs_s": times["alembic upgrade (1 pending)"]}))
    figures.append(Figure(
        BENCH, f"safe-migrate upgrade --no-schema-diff, 1 pending of {n}, vs bare alembic",
        f"{ratio(UP_OFF, UP_BARE):.2f}x ({fmt_s(off)}, {fmt_delta(delta(UP_OFF, UP_BARE))})",
        "≤ 1.10x", ratio(UP_OFF, UP_BARE) <= 1.10,
        limited_by=("the runner's imports (structlog, tenacity), side + lock connections, "
                    "monitor thread, run.json; the history is loaded once, as alembic does; "
                    "less the shutdown collection over the revision modules, which "
                    "alembic pays and safe-migrate skips"),
        data={"ratio": ratio(UP_OFF, UP_BARE), "seconds": off}))
    figures.append(Figure(
        BENCH, f"safe-migrate upgrade (diff on), 1 pending of {n}, vs bare alembic",
        f"{ratio(UP_ON, UP_BARE):.2f}x ({fmt_s(on)}, {fmt_delta(delta(UP_ON, UP_OFF))} over "
        "diff off)",
        limited_by="2 pg_dumps of a near-empty schema + pg_dump version probes",
        data={"ratio": ratio(UP_ON, UP_BARE), "seconds": on}))
    name = "safe-migrate upgrade, defaults (1 pending)"
    if name in med:
        if codes[name] != 0:
            figures.append(Figure(
                BENCH, f"safe-migrate upgrade, all defaults (diff + lint), 1 pending of {n}",
                f"FAILED exit {codes[name]}: {errors.get(name, '')}", "exit 0", False,
                limited_by="runner bug (see report): the default --lint warn path breaks the run",
                data={"exit_code": codes[name], "error": errors.get(name)}))
        else:
            figures.append(Figure(
                BENCH, f"safe-migrate upgrade, all defaults (diff + lint), 1 pending of {n}, "
                "vs bare alembic", f"{ratio(name, UP_BARE):.2f}x ({fmt_s(med[name])}; lint "
                f"adds {fmt_s(delta(name, UP_ON))})",
                limited_by="env.py probe + a connection to find what is pending, the "
                           "pending revision's offline SQL, a squawk process",
                data={"ratio": ratio(name, UP_BARE), "seconds": med[name]}))
    figures.append(Figure(
        BENCH, f"in-process: runner load_history vs alembic revision map ({n} revisions)",
        f"{fmt_s(load['runner'])} vs {fmt_s(load['alembic'])} "
        f"({fmt_delta(load['runner_extra'])}, {load['runner'] / load['alembic']:.2f}x)",
        limited_by=("both import every revision file; load_history adds a walk of all "
                    "revisions in order and turns alembic's warnings into errors"),
        data=load))
    return figures


def _in_process_history(ini: Path, repeats: int) -> dict[str, float]:
    """Fresh ScriptDirectory each time: alembic's map (get_heads) vs the runner's load_history."""
    def alembic_only() -> None:
        ScriptDirectory.from_config(AlembicConfig(str(ini))).get_heads()

    def runner() -> None:
        load_history(ScriptDirectory.from_config(AlembicConfig(str(ini)))).load()  # built on use

    alembic_times: list[float] = []
    runner_times: list[float] = []
    for _ in range(repeats):
        for fn, bucket in ((alembic_only, alembic_times), (runner, runner_times)):
            started = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - started)
    a, r = median(alembic_times), median(runner_times)
    return {"alembic": a, "runner": r, "runner_extra": r - a}


# -- schema size ------------------------------------------------------------------------------

def _create_tables(server: Server, database: str, start: int, stop: int) -> None:
    with server.connect(database) as conn:
        for first in range(start, stop, 100):
            sql = []
            for i in range(first, min(first + 100, stop)):
                t = f"t_{i:05d}"
                sql.append(f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL,"
                           f" qty integer CHECK (qty >= 0), created_at timestamptz NOT NULL"
                           f" DEFAULT now()); CREATE INDEX {t}_created_at_idx ON {t} (created_at);")
            conn.execute("BEGIN; " + " ".join(sql) + " COMMIT;")


def _pg_dump_rusage(server: Server, database: str) -> tuple[float, int | None, str]:
    """Wall time, max RSS (bytes) and output of pg_dump, run exactly as dump_schema runs it.

    The RSS comes from GNU time (/usr/bin/time -f %M): a direct child of this (large) Python
    process would report the parent's high-water mark, since Python spawns through vfork and
    Linux keeps the pre-exec mm's peak in ru_maxrss. None when GNU time is missing.
    """
    public, secret = libpq_params(make_url(server.url(database)))
    env = {**os.environ, **public, **secret, "PGAPPNAME": "safe-migrate-pg_dump",
           "PGCONNECT_TIMEOUT": "10", "PGCLIENTENCODING": "UTF8"}
    argv = [str(server.pg_dump), "--schema-only", "--no-owner", "--no-privileges"]
    argv += [f"--exclude-table={snapshot.table_pattern(t)}" for t in EXCLUDE]
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        if GNU_TIME.exists():
            argv = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *argv]
        with (Path(tmp) / "out").open("w+b") as out:
            started = time.perf_counter()
            proc = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.PIPE, check=False)
            elapsed = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"pg_dump exited {proc.returncode}: {proc.stderr[-500:]!r}")
            out.seek(0)
            text = out.read().decode()
        rss = None
        if rss_file.exists():
            lines = rss_file.read_text().split()
            rss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else None
    return elapsed, rss, text


def tables(server: Server, config: Config) -> list[Figure]:
    repeats = 3  # cheap at every size; the smallest sizes are too noisy with fewer
    rows: list[dict[str, float]] = []
    with server.database("tables") as database:
        stamp(server, database, "bench")  # an alembic_version table, excluded as upgrade does
        created = 0
        for count in config.table_counts:
            _create_tables(server, database, created, count)
            created = count
            with server.connect(database) as conn:
                conn.execute("VACUUM ANALYZE")
            dumps = [_pg_dump_rusage(server, database) for _ in range(repeats)]
            raw_before = dumps[-1][2]
            with server.connect(database) as conn:
                conn.execute("ALTER TABLE t_00000 ADD COLUMN extra integer")
            try:
                raw_after = _pg_dump_rusage(server, database)[2]
            finally:
                with server.connect(database) as conn:
                    conn.execute("ALTER TABLE t_00000 DROP COLUMN extra")
            norm_t, diff_t = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                before = snapshot.normalize(raw_before)
                norm_t.append(time.perf_counter() - started)
                after = snapshot.normalize(raw_after)
                started = time.perf_counter()
                delta = snapshot.diff(before, after)
                diff_t.append(time.perf_counter() - started)
            assert "extra integer" in delta, "diff did not show the added column"
            tracemalloc.start()
            try:
                snapshot.diff(snapshot.normalize(raw_before), snapshot.normalize(raw_after))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            rows.append({"tables": count, "pg_dump_s": median([d[0] for d in dumps]),
                         "pg_dump_maxrss": max((d[1] or 0) for d in dumps) or float("nan"),
                         "normalize_s": median(norm_t), "diff_s": median(diff_t),
                         "py_peak": peak, "dump_bytes": len(raw_before),
                         "dump_lines": raw_before.count("\n")})

    sizes = "/".join(f"{r['tables'] / 1000:g}k" for r in rows)
    first, last = rows[0], rows[-1]
    growth = last["tables"] / first["tables"]

    def series(key: str, fmt: Callable[[float], str]) -> str:
        return " / ".join(fmt(r[key]) for r in rows)

    def per_1k(key: str) -> float:
        return (last[key] - first[key]) / (last["tables"] - first["tables"]) * 1000

    def scaling(key: str) -> float:
        return last[key] / first[key] if first[key] else float("inf")

    linear_bound = growth * 1.2
    figures = []
    for key, label, limited in (
            ("pg_dump_s", "pg_dump --schema-only time",
             "pg_dump's own catalog queries + server; the runner adds nothing here"),
            ("normalize_s", "normalize() time (runner, pure Python)",
             "split_statements: a quote-tracking scan of every line of the dump"),
            ("diff_s", "diff() time (difflib.unified_diff, one changed column)",
             "difflib on the full dumps; near-identical inputs keep it close to linear")):
        figures.append(Figure(
            BENCH, f"{label} at {sizes} tables",
            f"{series(key, fmt_s)}; {fmt_delta(per_1k(key))} per 1k tables",
            f"≈ linear: x{scaling(key):.1f} for x{growth:g} tables ≤ x{linear_bound:.1f}",
            scaling(key) <= linear_bound, limited, data={"rows": rows, "per_1k_s": per_1k(key)}))
    figures.append(Figure(
        BENCH, f"pg_dump max RSS at {sizes} tables", series("pg_dump_maxrss", fmt_mib)
        + f"; +{fmt_mib(per_1k('pg_dump_maxrss'))} per 1k tables",
        limited_by=("pg_dump holds the catalog of every dumped object in memory (GNU time %M)"
                    if GNU_TIME.exists() else "not measured: /usr/bin/time (GNU time) missing"),
        data={"per_1k_bytes": per_1k("pg_dump_maxrss")}))
    figures.append(Figure(
        BENCH, f"Python peak (tracemalloc) for normalize x 2 + diff at {sizes} tables",
        series("py_peak", fmt_mib) + f" (dump {series('dump_bytes', fmt_mib)});"
        f" +{fmt_mib(per_1k('py_peak'))} per 1k tables",
        limited_by="statement lists + difflib line lists: a few x the dump text",
        data={"per_1k_bytes": per_1k("py_peak")}))
    total = 2 * (last["pg_dump_s"] + last["normalize_s"]) + last["diff_s"]
    figures.append(Figure(
        BENCH, f"schema-diff cost per upgrade at {last['tables']:g} tables "
        "(2 x (pg_dump + normalize) + diff)", fmt_s(total),
        limited_by=("pg_dump dominates" if last["pg_dump_s"] > last["normalize_s"] + last["diff_s"]
                    else "the runner's Python (normalize/diff) dominates"),
        data={"seconds": total}))
    return figures


def run(server: Server, config: Config) -> list[Figure]:
    return history(server, config) + tables(server, config)
