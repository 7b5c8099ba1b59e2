"""5. Fleet: N tenant schemas x 5 migrations, `upgrade --targets --parallel 4` vs the status-quo
shell loop of bare `alembic -x tenant=T upgrade head`, one process per tenant.

Side by side in one run, on one database per size. The bare loop is measured on a sample of
tenants (full: 20, quick: 6; half just before the fleet, half just after, as the machine's load
drifts) and reported per target: a loop is linear in its tenants, and
timing 2,000 process starts would add ~20 minutes to say the same. The fleet runs the whole
size; its per-target cost is its wall time / N. Peak memory: the fleet's own report
(fleet.json peak_rss_kib: the parent, and its largest worker).
Full: 100 / 1,000 / 2,000 tenants; quick: 20 / 50.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import (
    EXAMPLE,
    Config,
    Figure,
    Server,
    Step,
    clean_env,
    fmt_s,
    make_project,
    median,
    run_timed,
    safe_migrate_argv,
    tool,
    warm_up,
)

BENCH = "fleet"
TARGET_SPEEDUP = 20.0
PARALLEL = 4

# The Alembic cookbook's schema per tenant: -x tenant=NAME picks the schema, and the version
# table lives in it. DATABASE_URL, when set, is the URL (bare alembic; safe-migrate sets
# sqlalchemy.url itself from it).
TENANT_ENV = '''import os

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
if os.environ.get("DATABASE_URL"):
    config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
tenant = context.get_x_argument(as_dictionary=True).get("tenant", "public")


def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'SET search_path TO "{tenant}"')
        connection.commit()
        context.configure(connection=connection, target_metadata=None,
                          version_table_schema=tenant)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
'''

STEPS = [
    Step("accounts", '    op.create_table("accounts", sa.Column("id", sa.BigInteger, '
                     'primary_key=True), sa.Column("email", sa.Text, nullable=False))'),
    Step("nick", '    op.add_column("accounts", sa.Column("nick", sa.Text))'),
    Step("email index", '    op.create_index("ix_accounts_email", "accounts", ["email"])'),
    Step("plan", '    op.add_column("accounts", sa.Column("plan", sa.Text, '
                 'server_default="free"))'),
    Step("events", '    op.create_table("events", sa.Column("id", sa.BigInteger, '
                   'primary_key=True), sa.Column("account_id", sa.BigInteger))'),
]


def sizes(config: Config) -> tuple[int, ...]:
    return (20, 50) if config.quick else (100, 1000, 2000)


def sample(config: Config) -> int:
    return 6 if config.quick else 20


def _project(root: Path) -> Path:
    ini, _ = make_project(root, STEPS, salt="fleet")
    (root / "env.py").write_text(TENANT_ENV)
    shutil.copy(EXAMPLE / "script.py.mako", root / "script.py.mako")
    return ini


def _schemas(server: Server, database: str, names: list[str]) -> None:
    with server.connect(database) as conn:
        for start in range(0, len(names), 500):
            conn.execute("".join(f'CREATE SCHEMA "{n}";' for n in names[start:start + 500])
                         .encode())


def _bare_loop(server: Server, database: str, ini: Path, root: Path,
               tenants: list[str]) -> float:
    """Seconds per tenant of the shell loop: one `alembic` process per tenant, in turn."""
    env = clean_env(server.url(database))
    times = [run_timed([tool("alembic"), "-c", str(ini), "-x", f"tenant={t}", "upgrade", "head"],
                       env, cwd=root).seconds for t in tenants]
    return sum(times) / len(times)


def _fleet(server: Server, database: str, ini: Path, root: Path,
           tenants: list[str]) -> tuple[float, dict[str, int], dict[str, int]]:
    targets = root / f"targets-{len(tenants)}.jsonl"
    targets.write_text("".join(json.dumps({"name": t, "x": {"tenant": t}}) + "\n"
                               for t in tenants))
    artifacts = root / f"art-{len(tenants)}"
    run = run_timed(safe_migrate_argv(ini, "upgrade", "--targets", str(targets), "--parallel",
                                      str(PARALLEL), "--lint", "off", artifacts=artifacts),
                    clean_env(server.url(database)), cwd=root, timeout=1800)
    (report_file,) = artifacts.glob("*/fleet.json")
    report = json.loads(report_file.read_text())
    if report["counts"] != {"success": len(tenants)}:
        raise RuntimeError(f"fleet of {len(tenants)}: {report['counts']}")
    return run.seconds, report["peak_rss_kib"], report["counts"]


def run(server: Server, config: Config) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        ini = _project(root / "project")
        warm_up(ini, root)
        per_target_bare: list[float] = []
        for n in sizes(config):
            tenants = [f"tenant_{i:05d}" for i in range(n)]
            with server.database(f"fleet_{n}") as database:
                _schemas(server, database, tenants)
                # The loop's sample: schemas of its own in the same database, half of them
                # just before the fleet and half just after (the machine's load drifts).
                loop_tenants = [f"loop_{i:03d}" for i in range(sample(config))]
                _schemas(server, database, loop_tenants)
                half = len(loop_tenants) // 2
                before = _bare_loop(server, database, ini, root, loop_tenants[:half])
                seconds, rss, _ = _fleet(server, database, ini, root, tenants)
                after = _bare_loop(server, database, ini, root, loop_tenants[half:])
                bare = (before * half + after * (len(loop_tenants) - half)) / len(loop_tenants)
                per_target_bare.append(bare)
            per_target = seconds / n
            speedup = bare / per_target
            figures.append(Figure(
                BENCH, f"{n} tenants x 5 migrations: fleet --parallel {PARALLEL} vs a loop of "
                       "bare alembic",
                f"{speedup:.1f}x ({fmt_s(per_target)} vs {fmt_s(bare)} per tenant; fleet "
                f"{fmt_s(seconds)} in all, the loop {fmt_s(bare * n)} extrapolated)",
                f">= {TARGET_SPEEDUP:g}x", ok=speedup >= TARGET_SPEEDUP,
                limited_by=f"loop measured on {sample(config)} tenants, per target; the "
                           "fleet: CPU (2 cores): env.py's engine and connection, alembic's "
                           "DDL, the per-tenant ledger",
                data={"tenants": n, "fleet_seconds": seconds, "fleet_per_target": per_target,
                      "loop_per_target": bare, "speedup": speedup}))
            figures.append(Figure(
                BENCH, f"{n} tenants: peak memory", f"parent {rss['parent'] / 1024:.0f} MiB, "
                f"largest worker {rss['largest_worker'] / 1024:.0f} MiB",
                limited_by="per process (ru_maxrss); flat as the fleet grows",
                data={"tenants": n, **rss}))
    if per_target_bare:
        figures.append(Figure(BENCH, "bare alembic per tenant (median of the samples)",
                              fmt_s(median(per_target_bare)),
                              limited_by="process start and imports, per tenant"))
    return figures
