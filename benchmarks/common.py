"""Shared helpers for the benchmarks: the server, project generation, timing, figures.

Nothing here imports benchmark modules; each benchmark module takes a `Server` and a `Config`
and returns a list of `Figure`s.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from runner.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "basic"
VENV_BIN = Path(sys.executable).parent


# -- configuration & results ---------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    quick: bool

    # 1. overhead
    @property
    def chain_revisions(self) -> int:
        return 40 if self.quick else 200

    @property
    def chain_repeats(self) -> int:
        return 2 if self.quick else 9

    # 2. stall
    @property
    def blocker_seconds(self) -> float:
        return 4.0 if self.quick else 8.0

    # 3. scale
    @property
    def history_revisions(self) -> int:
        return 500 if self.quick else 2000

    @property
    def scale_repeats(self) -> int:
        return 1 if self.quick else 5  # quick: one sample per command (a smoke test, ~90 s)

    @property
    def table_counts(self) -> tuple[int, ...]:
        return (200, 500, 1000) if self.quick else (1000, 2500, 5000)


@dataclass
class Figure:
    """One row of the results table."""

    bench: str  # "overhead", "stall", "scale"
    name: str  # what is measured
    value: str  # human-readable value
    target: str = ""  # human-readable target ("" when informational)
    ok: bool | None = None  # None: no target (informational) or not measured
    limited_by: str = ""  # what dominates / limits this figure
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for --json

    @property
    def result(self) -> str:
        return "—" if self.ok is None else ("PASS" if self.ok else "MISS")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["result"] = self.result
        return out


def note(bench: str, name: str, text: str) -> Figure:
    """A row that says something was not measured (and why)."""
    return Figure(bench, name, "skipped", limited_by=text, data={"skipped": True})


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Rounds:
    """Times per variant, one entry per round: every round runs each variant once, back to
    back, so a slow phase of the machine (seen here: whole runs 25 % slower for a while) hits
    both sides of a ratio alike, where a ratio of two medians would mix phases."""

    times: dict[str, list[float]]

    def ratio(self, a: str, b: str) -> float:
        """Median of the per-round ratios a/b."""
        return median([x / y for x, y in zip(self.times[a], self.times[b], strict=True)])

    def delta(self, a: str, b: str) -> float:
        """Median of the per-round differences a - b."""
        return median([x - y for x, y in zip(self.times[a], self.times[b], strict=True)])


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_delta(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + fmt_s(abs(seconds))


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


# -- the server ----------------------------------------------------------------------------------

class Server:
    """One embedded PostgreSQL shared by all benchmarks; each benchmark makes its own databases."""

    def __init__(self) -> None:
        self.pg = EmbeddedPostgres(settings={"max_locks_per_transaction": "256"})
        self._counter = 0

    def __enter__(self) -> Server:
        self.pg.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pg.destroy()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (postgresql+psycopg://...)."""
        return self.pg.url(database).render_as_string(hide_password=False)

    def conninfo(self, database: str = "postgres") -> str:
        """libpq URL for psycopg."""
        return self.url(database).replace("postgresql+psycopg://", "postgresql://", 1)

    def connect(self, database: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo(database), autocommit=True, **kw)

    def create_db(self, prefix: str) -> str:
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_db(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        name = self.create_db(prefix)
        try:
            yield name
        finally:
            self.drop_db(name)

    @property
    def pg_dump(self) -> Path:
        return self.pg.pg_dump

    def server_version(self) -> str:
        with self.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


# -- machine description -------------------------------------------------------------------------

def machine_info(server: Server) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if match:
            mem = f"{int(match.group(1)) / 2**20:.1f} GiB"
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    dump_version = subprocess.run([str(server.pg_dump), "--version"], capture_output=True,
                                  text=True, check=False).stdout.strip()
    import alembic
    import sqlalchemy

    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({usable} usable)",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "alembic": alembic.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "postgresql_server": server.server_version(),
        "pg_dump": dump_version,
        "server_settings": "embedded PostgreSQL with fsync=off (as in the tests): a commit "
                           "costs a WAL write, not a disk flush",
        "bytecode": "warm __pycache__ for the runner and the revision files "
                    "(PYTHONDONTWRITEBYTECODE unset for the timed runs)",
        "load_average_at_start": load_average(),
    }


# -- running the tools ---------------------------------------------------------------------------

def tool(name: str) -> str:
    """The venv's console script (alembic, safe-migrate), falling back to PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (activate the venv)")
    return found


def alembic_frozen_exit(*args: str) -> list[str]:
    """argv of `alembic ARGS` that freezes the garbage collector before exiting, as
    safe-migrate does: the like-for-like reference for everything but the work itself."""
    return [sys.executable, str(REPO / "benchmarks" / "alembic_frozen_exit.py"), *args]


def clean_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that would change the tools' behaviour."""
    # PYTHONDONTWRITEBYTECODE (set on some machines) would make every run compile every
    # revision file and, in an editable install, the runner's own modules: warm_up's bytecode
    # cache is what a normal install has.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SAFE_MIGRATE_", "PG", "BENCH_")) and k not in (
               "DATABASE_URL", "DATABASE_URL_FILE", "ALEMBIC_CONFIG", "PYTHONDONTWRITEBYTECODE")}
    env["SAFE_MIGRATE_LOG_FORMAT"] = "json"
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


@dataclass
class Run:
    seconds: float
    returncode: int
    stderr: str


def wait_exact(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The child's exit code, the moment it exits; None if `timeout` passed (it is killed).

    Not `proc.wait(timeout)`: with a timeout, CPython polls with sleeps growing to 50 ms, so
    every measured time would be late by up to 50 ms (seen: run times in 50 ms steps).
    """
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        code = proc.wait()  # a blocking waitpid()
    finally:
        timer.cancel()
    return None if expired.is_set() else code


def run_timed(argv: Sequence[str], env: dict[str, str], *, cwd: Path | None = None,
              timeout: float = 600, check: bool = True) -> Run:
    """Wall time of one subprocess (start to exit), output captured to temp files."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err)
        code = wait_exact(proc, timeout)
        elapsed = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
    if code is None:
        raise RuntimeError(f"{' '.join(argv[:3])}... timed out after {timeout:g} s")
    if check and code != 0:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {code}:\n{tail}")
    return Run(elapsed, code, text)


def warm_up(ini: Path, cwd: Path) -> None:
    """One untimed `alembic heads` and `safe-migrate --help`: compile every revision file's and
    the runner's bytecode (__pycache__) and warm the page cache, so that no timed run pays for
    it (the first run alone would)."""
    run_timed([tool("alembic"), "-c", str(ini), "heads"], clean_env(), cwd=cwd)
    run_timed([sys.executable, "-m", "compileall", "-q", str(REPO / "runner")], clean_env())


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def safe_migrate_argv(ini: Path, command: str, *args: str,
                      artifacts: Path | None = None) -> list[str]:
    argv = [tool("safe-migrate"), command, "-c", str(ini)]
    if artifacts is not None:
        argv += ["--artifacts-dir", str(artifacts),
                 "--termination-log", str(artifacts / "termination-log")]
    return argv + list(args)


def upgrade_core_flags() -> list[str]:
    """`--lint off` when `upgrade` has a --lint flag: the core figures measure the runner's
    upgrade path (lock, transactions, snapshots); squawk's cost is reported separately by
    the "all defaults" variants."""
    out = subprocess.run([tool("safe-migrate"), "upgrade", "--help"], capture_output=True,
                         text=True, env=clean_env(), check=False).stdout
    return ["--lint", "off"] if "--lint" in out else []


def error_message(stderr: str) -> str:
    """The message of safe-migrate's final JSON `error` event (or the last stderr line)."""
    import json

    for line in reversed(stderr.strip().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "error":
            return str(record.get("message", ""))
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


def available_commands() -> set[str]:
    """Sub-commands `safe-migrate --help` lists (plan/status may not exist yet)."""
    out = subprocess.run([tool("safe-migrate"), "--help"], capture_output=True, text=True,
                         env=clean_env(), check=False).stdout
    match = re.search(r"\{([a-z,\-]+)\}", out)
    return set(match.group(1).split(",")) if match else set()


# -- alembic project generation ------------------------------------------------------------------

# Identical for bare alembic and safe-migrate: the example's env.py, which reads sqlalchemy.url,
# plus two lines so that bare `alembic` can be pointed at a database through DATABASE_URL as
# well (safe-migrate sets sqlalchemy.url itself from DATABASE_URL, so the lines are a no-op for
# it: same value).
# PER_MIGRATION_ENV=1 makes bare alembic run one transaction per migration, as safe-migrate
# always does: the like-for-like reference that shows what that costs by itself.
PER_MIGRATION_ENV = "BENCH_TRANSACTION_PER_MIGRATION"
_ENV_PRELUDE = '''import os as _bench_os

from alembic import context as _bench_context

if _bench_os.environ.get("DATABASE_URL"):
    _bench_context.config.set_main_option(
        "sqlalchemy.url", _bench_os.environ["DATABASE_URL"].replace("%", "%%"))

if _bench_os.environ.get("BENCH_TRANSACTION_PER_MIGRATION") == "1":
    _bench_configure = _bench_context.configure

    def _bench_per_migration(*args, **kwargs):
        kwargs["transaction_per_migration"] = True
        return _bench_configure(*args, **kwargs)

    _bench_context.configure = _bench_per_migration

'''

_REVISION_TEMPLATE = '''"""{message}

Revision ID: {rev}
Revises: {down_text}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def revision_id(index: int, salt: str = "") -> str:
    """12 hex digits, like alembic's, deterministic."""
    return hashlib.sha1(f"{salt}{index}".encode()).hexdigest()[:12]  # noqa: S324 - ids only


@dataclass(frozen=True)
class Step:
    message: str
    upgrade: str  # body lines (indented by 4)
    downgrade: str = "    pass"


def make_project(root: Path, steps: Sequence[Step], *, salt: str = "") -> tuple[Path, list[str]]:
    """alembic.ini + env.py (from examples/basic) + one linear revision per step.

    Returns the ini path and the revision ids, base first.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
    shutil.copy(EXAMPLE / "script.py.mako", root / "script.py.mako")
    (root / "env.py").write_text(_ENV_PRELUDE + (EXAMPLE / "env.py").read_text())
    versions = root / "versions"
    versions.mkdir(exist_ok=True)
    revs: list[str] = []
    down: str | None = None
    for index, step in enumerate(steps):
        rev = revision_id(index, salt)
        text = _REVISION_TEMPLATE.format(
            message=step.message, rev=rev, down=down, down_text=down or "",
            upgrade=step.upgrade, downgrade=step.downgrade)
        (versions / f"{index:05d}_{rev}.py").write_text(text)
        revs.append(rev)
        down = rev
    return root / "alembic.ini", revs


def stamp(server: Server, database: str, revision: str) -> None:
    """Put the database at `revision` without running anything (alembic's own table layout)."""
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) NOT NULL,"
                     " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
        conn.execute("DELETE FROM alembic_version")
        conn.execute("INSERT INTO alembic_version VALUES (%s)", (revision,))


def version_of(server: Server, database: str) -> str | None:
    with server.connect(database) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None
