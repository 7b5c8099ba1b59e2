"""`upgrade --targets FILE` / `--targets-query SQL`: the fleet run."""

from __future__ import annotations

import argparse
import contextlib
import functools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner import __version__
from runner.artifacts import Artifacts, write_termination_log
from runner.errors import PreflightError, UsageError
from runner.fleet import report
from runner.fleet.pool import (
    Inline,
    Policy,
    Processes,
    Result,
    RunOne,
    forwarding_signals,
    schedule,
)
from runner.fleet.shard import Shard, shard_from
from runner.fleet.targets import Target, from_query, load_file, resolve_all
from runner.lifecycle import interruptible
from runner.logging import get_logger
from runner.settings import Settings


def _count(value: str | None, flag: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"{flag}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{flag}: must be at least {minimum}, got {number}")
    return number


def policy_of(args: argparse.Namespace) -> Policy:
    return Policy(parallel=_count(args.parallel, "--parallel", minimum=1) or 1,
                  canary=_count(args.canary, "--canary", minimum=0) or 0,
                  max_failures=_count(args.max_failures, "--max-failures", minimum=1))


def select(settings: Settings, args: argparse.Namespace) -> tuple[list[Target], int, Shard | None]:
    """The targets of this run: the file's or the query's, this shard's slice of them.
    Returns them, how many the whole list has, and the shard."""
    shard = shard_from(args.shard)
    if args.targets:
        targets = load_file(Path(args.targets))
    else:
        if settings.database_url is None:
            raise UsageError("--targets-query runs on the control database: give "
                             "--database-url (or DATABASE_URL)")
        targets = from_query(settings.database_url, args.targets_query,
                             connect_timeout=settings.connect_timeout)
    total = len(targets)
    if shard is not None:
        targets = [t for t in targets if shard.owns(t.name)]
    return targets, total, shard


def upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from runner.fleet.run import Fleet, run_target
    from runner.frameworks.alembic.planning.history import check_target, load_history
    from runner.frameworks.alembic.project import load_project

    log = get_logger().bind(run_id=settings.run_id)
    if settings.embedded:
        raise UsageError("--embedded starts one throwaway server: it is no fleet "
                         "(drop --targets, or --embedded)")
    policy = policy_of(args)
    chosen, total, shard = select(settings, args)
    resolved = resolve_all(chosen, settings.database_url, settings.env_py_url)
    artifacts = Artifacts(settings.artifacts_dir)
    artifacts.prepare()
    project = load_project(settings)
    config_hint = str(settings.config_file)
    # Unlike a single run, the graph is built here, before any env.py runs: every worker
    # (forked below) needs the target's heads to tell a target at head with one query. A
    # history whose revision files need env.py's setup is refused here (exit 3).
    history = load_history(project.script, config_hint=config_hint, config=project.config)
    try:
        expected = list(check_target(history, settings.target, config_hint=config_hint))
    except PreflightError as exc:
        log.error("preflight.failed", reason=exc.message)
        raise
    pg_dump = None
    if args.fleet_snapshots and settings.schema_diff:
        from runner.schema import snapshot

        pg_dump = snapshot.find_pg_dump(settings.pg_dump)
    fleet = Fleet(settings=settings, args=args, project=project, history=history,
                  expected=expected, targets=resolved, pg_dump=pg_dump,
                  ini_url=project.config.get_main_option("sqlalchemy.url")
                  if settings.database_url is None else None)
    started = datetime.now(UTC)
    header: dict[str, Any] = {
        "run_id": settings.run_id, "tool_version": __version__, "target": settings.target,
        "expected_heads": expected, "config": config_hint,
        "source": args.targets or "--targets-query", "targets_total": total,
        "shard": str(shard) if shard else None, "parallel": policy.parallel,
        "canary": policy.canary, "max_failures": policy.max_failures,
        "started_at": started.isoformat()}
    log.info("fleet.start", targets=len(resolved), targets_total=total,
             shard=header["shard"], parallel=policy.parallel, canary=policy.canary,
             max_failures=policy.max_failures, target=settings.target,
             artifacts_dir=str(settings.artifacts_dir))

    def done(index: int, result: Result) -> None:
        result.setdefault("name", resolved[index].name)
        log.info("fleet.target", name=result["name"], outcome=result["outcome"],
                 exit_code=result["exit_code"], applied=len(result.get("applied") or ()),
                 duration_ms=result.get("duration_ms"))

    runner = functools.partial(run_target, fleet)
    with _executor(runner, len(resolved), policy, log) as (executor, stopping):
        results, stopped_by = schedule(len(resolved), executor, policy, stopping, done)
    ordered = [{"name": resolved[i].name, **results[i]} for i in range(len(resolved))]
    header["ended_at"] = datetime.now(UTC).isoformat()
    header["peak_rss_kib"] = _peak_rss()
    data = report.build(header, ordered, stopped_by)
    artifacts.write_text("fleet.json", report.dumps(data))
    log.info("fleet.done", exit_code=data["exit_code"], counts=data["counts"],
             not_started=data["not_started"], stopped_by=stopped_by,
             file=str(settings.artifacts_dir / "fleet.json"))
    report.print_summary(data)
    write_termination_log(settings.termination_log,
                          f"safe-migrate fleet: exit {data['exit_code']}; " + ", ".join(
                              f"{n} {o}" for o, n in data["counts"].items()))
    return int(data["exit_code"])


def _peak_rss() -> dict[str, int]:
    """Peak resident memory of this process and of its largest worker (the workers are
    joined by now, so RUSAGE_CHILDREN covers them): flat as the fleet grows."""
    import resource

    return {"parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


@contextlib.contextmanager
def _executor(run: RunOne, count: int, policy: Policy,
              log: Any) -> Iterator[tuple[Inline | Processes, threading.Event]]:
    from runner.fleet.run import close_sessions

    workers = min(policy.parallel, count)
    if workers <= 1:
        try:
            with interruptible(log) as interrupted:
                yield Inline(run, interrupted), interrupted
        finally:
            close_sessions()
        return
    stopping = threading.Event()
    processes = Processes(run, workers, lambda: interruptible(log), on_exit=close_sessions)
    try:
        with forwarding_signals(processes, stopping, log):
            yield processes, stopping
    finally:
        processes.close()
