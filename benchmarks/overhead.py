"""1. Overhead of the runner over bare `alembic upgrade head` on an N-revision chain.

Five variants, each on a fresh database, run alternately (A, A', A", B, C, A, A', ...) so
that drift in the machine's speed hits all of them alike:
  A  alembic -c INI upgrade head     (env.py as generated: one transaction for the whole run)
  A' the same with transaction_per_migration=True: one transaction per migration, as
     safe-migrate always runs them
  A" A', and gc.freeze() before the interpreter exits, as safe-migrate does (its shutdown
     then skips a full collection): the like-for-like reference for the runner's own cost
  B  safe-migrate upgrade --no-schema-diff
  C  safe-migrate upgrade            (pg_dump before and after, normalized, diffed)
Plus the median time of one schema snapshot (pg_dump + normalize) of the final schema, so
that C can be compared with A + 2 snapshots.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    PER_MIGRATION_ENV,
    Config,
    Figure,
    Rounds,
    Server,
    Step,
    alembic_frozen_exit,
    clean_env,
    error_message,
    fmt_delta,
    fmt_s,
    make_project,
    median,
    run_timed,
    safe_migrate_argv,
    tool,
    upgrade_core_flags,
    warm_up,
)
from runner.schema import snapshot

BENCH = "overhead"
FROZEN = "alembic_per_migration_frozen"


def chain_steps(count: int) -> list[Step]:
    """create table / add column / create index, cycling; one table per three revisions."""
    steps: list[Step] = []
    for index in range(count):
        table = f"t_{index // 3:04d}"
        kind = index % 3
        if kind == 0:
            steps.append(Step(f"create {table}", (
                f"    op.create_table(\n"
                f"        {table!r},\n"
                f"        sa.Column('id', sa.BigInteger, primary_key=True),\n"
                f"        sa.Column('name', sa.Text, nullable=False),\n"
                f"        sa.Column('created_at', sa.DateTime(timezone=True),"
                f" server_default=sa.func.now()),\n"
                f"    )"), f"    op.drop_table({table!r})"))
        elif kind == 1:
            steps.append(Step(f"add {table}.note", (
                f"    op.add_column({table!r}, sa.Column('note', sa.Text, nullable=True))"),
                f"    op.drop_column({table!r}, 'note')"))
        else:
            steps.append(Step(f"index {table}.name", (
                f"    op.create_index('ix_{table}_name', {table!r}, ['name'])"),
                f"    op.drop_index('ix_{table}_name', table_name={table!r})"))
    return steps


def run(server: Server, config: Config) -> list[Figure]:
    n, repeats = config.chain_revisions, config.chain_repeats
    core = upgrade_core_flags()  # ["--lint", "off"] when upgrade has squawk lint
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        ini, revs = make_project(root / "project", chain_steps(n), salt="chain")
        bare_argv = [tool("alembic"), "-c", str(ini), "upgrade", "head"]
        variants: dict[str, Callable[[Path], list[str]]] = {
            "alembic": lambda art: bare_argv,
            "alembic_per_migration": lambda art: bare_argv,
            "alembic_per_migration_frozen": lambda art: alembic_frozen_exit(
                "-c", str(ini), "upgrade", "head"),
            "diff_off": lambda art: safe_migrate_argv(ini, "upgrade", "--no-schema-diff", *core,
                                                      artifacts=art),
            "diff_on": lambda art: safe_migrate_argv(ini, "upgrade", *core, artifacts=art),
        }
        if core:
            variants["defaults"] = lambda art: safe_migrate_argv(ini, "upgrade", artifacts=art)
        times: dict[str, list[float]] = {name: [] for name in variants}
        failures: dict[str, str] = {}
        last_db: str | None = None
        warm_up(ini, root)
        for rep in range(repeats):
            for name, argv in variants.items():
                database = server.create_db(f"ovh_{name}")
                artifacts = root / f"art-{name}-{rep}"
                artifacts.mkdir()
                try:
                    env = clean_env(server.url(database))
                    if name.startswith("alembic_per_migration"):
                        env[PER_MIGRATION_ENV] = "1"
                    result = run_timed(argv(artifacts), env, cwd=root, check=name != "defaults")
                    if result.returncode != 0:
                        failures[name] = f"exit {result.returncode}: {error_message(result.stderr)}"
                    times[name].append(result.seconds)
                finally:
                    if last_db is not None:
                        server.drop_db(last_db)
                    last_db = database
        # The last database is at head (unless the last variant failed): snapshot the final
        # schema of a fresh full upgrade.
        assert last_db is not None
        server.drop_db(last_db)
        with server.database("ovh_final") as final:
            run_timed(variants["alembic"](root), clean_env(server.url(final)), cwd=root)
            with server.connect(final) as conn:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            assert row is not None and row[0] == revs[-1], f"not at head: {row}"
            snap_times, dump_times = snapshot_times(server, final, 5)

    bare, per_mig, off, on = (median(times[k]) for k in (
        "alembic", "alembic_per_migration", "diff_off", "diff_on"))
    snap, dump = median(snap_times), median(dump_times)

    rounds = Rounds(times)
    ratio, delta = rounds.ratio, rounds.delta

    def per_rev(seconds: float) -> str:
        return f"{seconds / n * 1000:.1f} ms/rev"

    flags = " ".join(core)
    raw = {"revisions": n, "repeats": repeats, "runs_s": times, "core_flags": core,
           "median_s": {k: median(v) for k, v in times.items()},
           "snapshot_median_s": snap, "pg_dump_median_s": dump, "failures": failures}
    bound = 1.10 + 2 * snap / bare  # as a ratio to bare: bare x 1.10 + 2 snapshots
    figures = [
        Figure(BENCH, f"bare `alembic upgrade head`, {n} revisions (median of {repeats}; ratios "
               "below: median of the per-round ratios)",
               f"{fmt_s(bare)} ({per_rev(bare)})", limited_by=(
                   "baseline: Python start-up + imports (~0.5 s) + alembic importing the scripts;"
                   " one transaction for all revisions"), data=raw),
        Figure(BENCH, "bare alembic with transaction_per_migration=True vs bare alembic",
               f"{ratio('alembic_per_migration', 'alembic'):.2f}x ({fmt_s(per_mig)}, "
               f"{fmt_delta(delta('alembic_per_migration', 'alembic'))})",
               limited_by=("reference: a BEGIN and a COMMIT round trip per migration; "
                           "safe-migrate always runs one transaction per migration, so this "
                           "part of its overhead is the price of that guarantee"),
               data={"ratio": ratio("alembic_per_migration", "alembic")}),
        Figure(BENCH, "alembic as in the previous row, with gc.freeze() before it exits (as "
               "safe-migrate does) vs without",
               f"{ratio(FROZEN, 'alembic_per_migration'):.2f}x "
               f"({fmt_delta(delta(FROZEN, 'alembic_per_migration'))})",
               limited_by=("reference: the interpreter's shutdown runs a full collection over "
                           "every object still alive, the imported revision modules included; "
                           "safe-migrate skips it, which the next row includes"),
               data={"ratio": ratio(FROZEN, "alembic_per_migration")}),
        Figure(BENCH, f"safe-migrate upgrade --no-schema-diff {flags} vs bare alembic".strip(),
               f"{ratio('diff_off', 'alembic'):.2f}x ({fmt_s(off)}, "
               f"{fmt_delta(delta('diff_off', 'alembic'))} = "
               f"{delta('diff_off', 'alembic') / n * 1000:+.1f} ms/rev)",
               "≤ 1.10x", ratio("diff_off", "alembic") <= 1.10, limited_by=(
                   "the per-migration transactions (two rows up), less the skipped shutdown "
                   "collection (previous row), plus the runner's own cost (next row)"),
               data={"ratio": ratio("diff_off", "alembic")}),
        Figure(BENCH, f"safe-migrate upgrade --no-schema-diff {flags} vs alembic with "
               "transaction_per_migration=True and the same exit (the runner's own "
               "cost)".replace("  ", " "),
               f"{ratio('diff_off', FROZEN):.2f}x "
               f"({fmt_delta(delta('diff_off', FROZEN))} = "
               f"{delta('diff_off', FROZEN) / n * 1000:+.2f} ms/rev)", limited_by=(
                   "fixed: structlog/tenacity and the runner's imports, side + lock "
                   "connections, run.json; per revision: 2 JSON log events, the progress journal, "
                   "the source scan, the lock check and monitor watch (the step's "
                   "pg_current_xact_id() rides on its BEGIN: no round trip of its own)"),
               data={"ratio": ratio("diff_off", FROZEN)}),
        Figure(BENCH, f"safe-migrate upgrade {flags} (schema diff on) vs bare alembic".strip(),
               f"{ratio('diff_on', 'alembic'):.2f}x ({fmt_s(on)}; "
               f"{fmt_delta(delta('diff_on', 'diff_off'))} over diff off)",
               f"≤ (bare x 1.10 + 2 x snapshot) / bare = {bound:.2f}x",
               ratio("diff_on", "alembic") <= bound, limited_by=(
                   "2 pg_dump runs (before: empty schema, after: full) + `pg_dump --version` "
                   "probes + normalize/diff"),
               data={"ratio": ratio("diff_on", "alembic"), "bound_ratio": bound,
                     "diff_cost_s": delta("diff_on", "diff_off")}),
        Figure(BENCH, f"one snapshot of the final schema ({n // 3 + (n % 3 > 0)} tables)",
               f"{fmt_s(snap)} (pg_dump alone {fmt_s(dump)})",
               f"diff-on cost {fmt_s(delta('diff_on', 'diff_off'))} ≤ 2 x snapshot + 0.1 s = "
               f"{fmt_s(2 * snap + 0.1)}",
               delta("diff_on", "diff_off") <= 2 * snap + 0.1,
               limited_by="pg_dump's own time dominates (process start, catalog queries)",
               data={"snapshot_s": snap, "pg_dump_s": dump}),
    ]
    if "defaults" in times:
        dflt = median(times["defaults"])
        if "defaults" in failures:
            figures.append(Figure(
                BENCH, "safe-migrate upgrade, all defaults (diff on + lint warn)",
                f"FAILED {failures['defaults']}", "exit 0", False,
                limited_by="runner bug (see report): the default --lint warn path breaks the run",
                data={"failure": failures["defaults"], "seconds": dflt}))
        else:
            figures.append(Figure(
                BENCH, "safe-migrate upgrade, all defaults (diff on + lint warn) vs bare alembic",
                f"{ratio('defaults', 'alembic'):.2f}x ({fmt_s(dflt)}; lint adds "
                f"{fmt_s(delta('defaults', 'diff_on'))})",
                limited_by="squawk lint of every pending revision's offline SQL (offline env.py "
                           "run + squawk process)",
                data={"ratio": ratio("defaults", "alembic"), "seconds": dflt,
                      "lint_s": delta("defaults", "diff_on")}))
    return figures


def snapshot_times(server: Server, database: str, repeats: int) -> tuple[list[float], list[float]]:
    """take_snapshot (pg_dump + normalize) and raw pg_dump times on `database`."""
    from sqlalchemy.engine import make_url

    url = make_url(server.url(database))
    exclude = [("public", "alembic_version")]
    snaps, dumps = [], []
    for _ in range(repeats):
        snaps.append(snapshot.take_snapshot(server.pg_dump, url, exclude).seconds)
        started = time.perf_counter()
        snapshot.dump_schema(server.pg_dump, url, exclude_tables=exclude)
        dumps.append(time.perf_counter() - started)
    return snaps, dumps
