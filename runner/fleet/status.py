"""`status --targets`: the fleet at a glance (read-only), one target after another.

Each target's state, from its version table and its ledger (status's own reading):
error (could not be read) > partial (an unresolved partial apply is recorded) > failed (the
last run failed and revisions are pending) > unknown-revision > behind > at-head.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

from runner.errors import SafeMigrateError, UsageError
from runner.fleet.command import select
from runner.fleet.run import for_target, point_project
from runner.fleet.targets import Resolved, resolve_all
from runner.frameworks.alembic.project import Project, load_project
from runner.logging import get_logger
from runner.settings import Settings
from runner.urls import mask_text

STATES = ("at-head", "behind", "unknown-revision", "failed", "partial", "error")


def state_of(report: dict[str, Any]) -> str:
    if report["unresolved"]:
        return "partial"
    last = report.get("last_run") or {}
    if report["pending_count"] and (last.get("exit_code") or last.get("died")):
        return "failed"
    if report["unknown_revisions"]:
        return "unknown-revision"
    return "behind" if report["pending_count"] else "at-head"


def read_target(settings: Settings, project: Project, target: Resolved,
                ini_url: str | None) -> dict[str, Any]:
    from runner.frameworks.alembic.commands.status import _collect

    one = for_target(settings, target)
    point_project(project, one, ini_url)
    started = time.monotonic()
    try:
        report = _collect(one, project)
    except SafeMigrateError as exc:
        return {"name": target.name, "state": "error", "exit_code": int(exc.exit_code),
                "error": " ".join(mask_text(exc.message).split())}
    last = report["last_run"] or {}
    return {"name": target.name, "state": state_of(report),
            "database_url": report["database_url"], "version_table": report["version_table"],
            "current": report["current"], "pending_count": report["pending_count"],
            "unknown_revisions": report["unknown_revisions"],
            "last_run": {k: last.get(k) for k in ("run_id", "outcome", "exit_code", "died")}
            if last else None,
            "unresolved": len(report["unresolved"]),
            "lock_held": bool(report["lock_holders"]),
            "duration_ms": round((time.monotonic() - started) * 1000)}


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.embedded:
        raise UsageError("--embedded starts one throwaway server: it is no fleet")
    chosen, total, shard = select(settings, args)
    resolved = resolve_all(chosen, settings.database_url, settings.env_py_url)
    project = load_project(settings)
    ini_url = (project.config.get_main_option("sqlalchemy.url")
               if settings.database_url is None else None)
    targets = [read_target(settings, project, t, ini_url) for t in resolved]
    counts = Counter(t["state"] for t in targets)
    report: dict[str, Any] = {"targets_total": total, "shard": str(shard) if shard else None,
              "targets_read": len(targets),
              "counts": {state: counts[state] for state in STATES if counts[state]},
              "targets": targets}
    get_logger().info("status.fleet", counts=report["counts"], targets=len(targets))
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    parts = ", ".join(f"{n} {state}" for state, n in report["counts"].items())
    print(f"fleet{f' (shard {shard})' if shard else ''}: {len(targets)} targets: {parts}")
    for target in targets:
        if target["state"] == "at-head":
            continue
        detail = target.get("error") or (
            f"at {', '.join(target['current']) or 'base'}, {target['pending_count']} pending"
            + (f", last run {target['last_run']['outcome']}" if target["last_run"] else ""))
        print(f"  {target['name']}: {target['state']}: {detail}")
    return 0
