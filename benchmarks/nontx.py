"""4. A history with many non-transactional revisions, and what the run ledger costs.

The chain of `overhead` with one revision in nine a `CREATE INDEX CONCURRENTLY` in an
autocommit block (23 of 200, as in the real history the issue measured). Before each of
those the runner records the catalog (on its own connection, into the ledger); it used to
pg_dump the whole schema there. Variants, alternated round by round on fresh databases:
  A  bare `alembic upgrade head`
  A' the same with transaction_per_migration=True (what the runner always does)
  B  safe-migrate upgrade --lint off            (schema diff on, ledger on: the defaults
                                                 that concern the database)
  C  safe-migrate upgrade --lint off --no-schema-diff
  D  safe-migrate upgrade --lint off --no-schema-diff --no-ledger   (C without the ledger)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    PER_MIGRATION_ENV,
    Config,
    Figure,
    Rounds,
    Server,
    Step,
    clean_env,
    error_message,
    fmt_delta,
    fmt_s,
    make_project,
    median,
    run_timed,
    safe_migrate_argv,
    tool,
    warm_up,
)
from benchmarks.overhead import chain_steps

BENCH = "nontx"
EVERY = 9  # one revision in nine is non-transactional: 23 of 200


def steps(count: int) -> list[Step]:
    out = chain_steps(count)
    for index in range(EVERY - 1, count, EVERY):
        table = f"t_{index // 3:04d}"
        out[index] = Step(f"concurrent index {table}", (
            f"    with op.get_context().autocommit_block():\n"
            f"        op.create_index('ix_{table}_cc', {table!r}, ['id'],"
            f" postgresql_concurrently=True)"),
            f"    op.drop_index('ix_{table}_cc', table_name={table!r})")
    return out


def run(server: Server, config: Config) -> list[Figure]:
    n, repeats = config.chain_revisions, config.chain_repeats
    nontx = len(range(EVERY - 1, n, EVERY))
    with tempfile.TemporaryDirectory(prefix="bench-nontx-") as tmp:
        root = Path(tmp)
        ini, _ = make_project(root / "project", steps(n), salt="nontx")
        variants: dict[str, Callable[[Path], list[str]]] = {
            "alembic": lambda art: [tool("alembic"), "-c", str(ini), "upgrade", "head"],
            "alembic_per_migration": lambda art: [tool("alembic"), "-c", str(ini), "upgrade",
                                                  "head"],
            "diff_on": lambda art: safe_migrate_argv(ini, "upgrade", "--lint", "off",
                                                     artifacts=art),
            "diff_off": lambda art: safe_migrate_argv(ini, "upgrade", "--lint", "off",
                                                      "--no-schema-diff", artifacts=art),
            "no_ledger": lambda art: safe_migrate_argv(ini, "upgrade", "--lint", "off",
                                                       "--no-schema-diff", "--no-ledger",
                                                       artifacts=art),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        warm_up(ini, root)
        for rep in range(repeats):
            for name, argv in variants.items():
                with server.database(f"ntx_{name}") as database:
                    artifacts = root / f"art-{name}-{rep}"
                    env = clean_env(server.url(database))
                    if name == "alembic_per_migration":
                        env[PER_MIGRATION_ENV] = "1"
                    result = run_timed(argv(artifacts), env, cwd=root, check=False)
                    if result.returncode != 0:
                        raise RuntimeError(f"{name}: exit {result.returncode}: "
                                           f"{error_message(result.stderr)}")
                    times[name].append(result.seconds)
    rounds = Rounds(times)
    bare = median(times["alembic"])
    what = f"{n} revisions, {nontx} non-transactional"
    return [
        Figure(BENCH, f"safe-migrate upgrade --lint off (schema diff on) vs bare alembic, {what}",
               f"{rounds.ratio('diff_on', 'alembic'):.2f}x ({fmt_s(median(times['diff_on']))} "
               f"vs {fmt_s(bare)})", "≤ 1.15x", rounds.ratio("diff_on", "alembic") <= 1.15,
               limited_by=("two pg_dump snapshots: the after one on the critical path, the "
                           "before one started with the lock (overlaps the run's set-up); "
                           "before each non-transactional revision an OID scan (~1 ms) where a "
                           "pg_dump used to run"),
               data={"ratio": rounds.ratio("diff_on", "alembic"), "runs_s": times}),
        Figure(BENCH, f"the same with --no-schema-diff vs bare alembic, {what}",
               f"{rounds.ratio('diff_off', 'alembic'):.2f}x", "≤ 1.10x",
               rounds.ratio("diff_off", "alembic") <= 1.10,
               data={"ratio": rounds.ratio("diff_off", "alembic")}),
        Figure(BENCH, f"--no-schema-diff vs alembic with transaction_per_migration=True (the "
               f"runner's own cost), {what}",
               f"{rounds.ratio('diff_off', 'alembic_per_migration'):.2f}x "
               f"({fmt_delta(rounds.delta('diff_off', 'alembic_per_migration'))}); alembic "
               f"per migration vs bare: {rounds.ratio('alembic_per_migration', 'alembic'):.2f}x",
               limited_by=("per non-transactional revision: the OID scan (one prepared "
                           "query), its ledger UPDATE and pre-step file"),
               data={"ratio": rounds.ratio("diff_off", "alembic_per_migration")}),
        Figure(BENCH, f"the run ledger's cost: --no-schema-diff, with vs without --no-ledger, "
               f"{what}",
               f"{fmt_delta(rounds.delta('diff_off', 'no_ledger'))} "
               f"({rounds.ratio('diff_off', 'no_ledger'):.3f}x)",
               limited_by=("create-if-missing, one row per run, the unresolved check, one "
                           "UPDATE per non-transactional revision (its pre-step record), the "
                           "final UPDATE"),
               data={"delta_s": rounds.delta("diff_off", "no_ledger")}),
    ]
