"""5. Django: `safe-migrate upgrade --framework django` vs `manage.py migrate`, same history.

The history is examples/django (Django's contrib apps, two apps of its own: 23 migrations)
plus a generated `bench` app: a chain of AddField migrations on a few tables, one in nine an
AddIndexConcurrently (atomic = False). Variants, alternated round by round on fresh databases:
  M  python manage.py migrate                                      (Django's own command)
  S  safe-migrate upgrade --framework django --no-schema-diff --lint off   (target: <= 1.10x M)
  D  safe-migrate upgrade --framework django --lint off                    (with the two pg_dumps)
Nothing here imports Django: both run as child processes in the project's folder.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    REPO,
    Config,
    Figure,
    Rounds,
    Server,
    clean_env,
    fmt_s,
    median,
    run_timed,
    tool,
)

BENCH = "django"
EVERY = 9  # one migration in nine is non-atomic (AddIndexConcurrently)
TABLES = 4


def _migration(index: int) -> str:
    """bench/migrations/NNNN: a column on one of the tables, or an index built concurrently."""
    deps = f'[("bench", "{index - 1:04d}")]' if index > 1 else '[("shop", "0001_initial")]'
    table = f"Thing{index % TABLES}"
    if index <= TABLES:  # the tables first
        body = (f'migrations.CreateModel("Thing{index - 1}", fields=[("id", models.BigAutoField'
                f'(primary_key=True, serialize=False, auto_created=True, verbose_name="ID"))])')
        return _module(deps, body)
    if index % EVERY == 0:
        body = (f'AddIndexConcurrently("{table.lower()}", models.Index(fields=["id"], '
                f'name="bench_ix_{index:04d}"))')
        return _module(deps, body, atomic=False)
    body = (f'migrations.AddField("{table.lower()}", "f{index:04d}", '
            "models.IntegerField(null=True))")
    return _module(deps, body)


def _module(deps: str, operation: str, *, atomic: bool = True) -> str:
    return ("from django.contrib.postgres.operations import AddIndexConcurrently\n"
            "from django.db import migrations, models\n\n\n"
            "class Migration(migrations.Migration):\n"
            + ("    atomic = False\n" if not atomic else "")
            + f"    dependencies = {deps}\n    operations = [{operation}]\n")


def make_project(root: Path, count: int) -> Path:
    shutil.copytree(REPO / "examples" / "django", root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    app = root / "bench"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    for index in range(1, count + 1):
        (app / "migrations" / f"{index:04d}.py").write_text(_migration(index))
    settings = root / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS += ["bench"]\n')
    return root


def run(server: Server, config: Config) -> list[Figure]:
    count, repeats = (40, 3) if config.quick else (200, 7)
    with tempfile.TemporaryDirectory(prefix="bench-django-") as tmp:
        root = make_project(Path(tmp) / "project", count)
        # --lint off as in the Alembic figures: manage.py migrate lints nothing.
        sm = [tool("safe-migrate"), "upgrade", "--framework", "django", "--settings",
              "mysite.settings", "--lint", "off"]
        variants: dict[str, Callable[[Path], list[str]]] = {
            "migrate": lambda art: [sys.executable, "manage.py", "migrate", "-v", "0"],
            "diff_off": lambda art: [*sm, "--no-schema-diff", "--artifacts-dir", str(art)],
            "diff_on": lambda art: [*sm, "--artifacts-dir", str(art), "--pg-dump",
                                    str(server.pg_dump)],
        }
        # Untimed: byte-compile the migrations and the runner, warm the page cache.
        with server.database("dj_warm") as database:
            run_timed(variants["migrate"](root), clean_env(server.url(database)), cwd=root)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(repeats):
            for name, argv in variants.items():
                with server.database(f"dj_{name}") as database:
                    env = clean_env(server.url(database))
                    result = run_timed(argv(Path(tmp) / f"art-{name}-{rep}"), env, cwd=root)
                    times[name].append(result.seconds)
    rounds = Rounds(times)
    total = count + 23
    what = f"{total} migrations ({len(range(EVERY, count + 1, EVERY))} non-atomic)"
    ratio = rounds.ratio("diff_off", "migrate")
    return [
        Figure(BENCH, f"upgrade --framework django --no-schema-diff vs manage.py migrate, {what}",
               f"{ratio:.2f}x ({fmt_s(median(times['diff_off']))} vs "
               f"{fmt_s(median(times['migrate']))})", "≤ 1.10x", ratio <= 1.10,
               limited_by=("per run: the core's imports (structlog, tenacity; no SQLAlchemy "
                           "on this path), the lock and monitor sessions, the ledger; per "
                           "non-atomic migration (~2 ms): the catalog record, its ledger UPDATE, "
                           "pre-step file and run.json; per migration: journal, two events"),
               data={"ratio": ratio, "runs_s": times}),
        Figure(BENCH, f"the same with the schema diff on vs manage.py migrate, {what}",
               f"{rounds.ratio('diff_on', 'migrate'):.2f}x",
               limited_by="two pg_dump snapshots (before/after)",
               data={"ratio": rounds.ratio("diff_on", "migrate")}),
    ]
