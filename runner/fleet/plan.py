"""`plan --targets`: upgrade's checks on every target (read-only), grouped by where they are.

Targets at the same revision share one plan: the pending revisions are described (offline
SQL, transactional or not) and linted once per group, not once per target. Exit 0 when upgrade
would start on every target; else the fleet's rule (runner.fleet.report) over each target's
refusal (3 preflight, 2 configuration, 7 unreachable...).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runner.errors import ExitCode, SafeMigrateError, UsageError
from runner.fleet import report
from runner.fleet.command import select
from runner.fleet.run import for_target, point_project
from runner.fleet.targets import resolve_all
from runner.frameworks.alembic.project import load_project
from runner.logging import get_logger, mask_value
from runner.settings import Settings
from runner.urls import mask_text


def run(settings: Settings, args: argparse.Namespace) -> int:
    from runner.frameworks.alembic.commands import plan as single

    if settings.embedded or args.from_rev is not None:
        raise UsageError("plan --targets reads each target's database: drop --embedded / --from")
    log = get_logger().bind(run_id=settings.run_id)
    chosen, total, shard = select(settings, args)
    resolved = resolve_all(chosen, settings.database_url, settings.env_py_url)
    project = load_project(settings)
    ini_url = (project.config.get_main_option("sqlalchemy.url")
               if settings.database_url is None else None)
    hint = str(settings.config_file)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    refused: list[dict[str, Any]] = []
    for target in resolved:
        one = for_target(settings, target)
        point_project(project, one, ini_url)
        try:
            history, current, steps = single._preflight(one, args, project, hint, {}, log)
        except SafeMigrateError as exc:
            refused.append({"name": target.name, "exit_code": int(exc.exit_code),
                            "error": " ".join(mask_text(exc.message).split())})
            continue
        group = groups.setdefault(current, {"current": list(current), "targets": [],
                                            "steps": steps, "history": history})
        group["targets"].append(target.name)
    findings = 0
    lint_refusals: list[str] = []
    for group in groups.values():
        planned = single._describe(project, group.pop("history"), tuple(group["current"]),
                                   group.pop("steps"), log) if group.get("steps") else []
        group.pop("steps", None)
        group.pop("history", None)
        if planned and args.lint != "off":
            single._lint(project, planned, args, {"lint": {}}, log)
        found = [f for p in planned for f in p.findings]
        findings += len(found)
        if args.lint == "error" and found:
            lint_refusals += group["targets"]
        group["pending"] = [p.to_dict() for p in planned]
    results = [{"exit_code": r["exit_code"], "outcome": "refused"} for r in refused] + [
        {"exit_code": int(ExitCode.PREFLIGHT), "outcome": "lint"} for _ in lint_refusals]
    code = report.overall_code(results, None)
    doc = {"targets_total": total, "shard": str(shard) if shard else None,
           "targets_planned": len(resolved), "target": settings.target,
           "at_target": sum(len(g["targets"]) for g in groups.values() if not g["pending"]),
           "groups": list(groups.values()), "refused": refused,
           "lint": {"mode": args.lint, "findings": findings, "refused": lint_refusals},
           "allowed": code == ExitCode.OK, "exit_code": int(code)}
    log.info("plan.fleet", groups=len(groups), refused=len(refused), exit_code=int(code))
    _output(mask_value(doc), args.output_format)
    if code != ExitCode.OK:
        error = SafeMigrateError(f"upgrade would be refused on {len(refused) + len(lint_refusals)}"
                                 f" of {len(resolved)} targets (see above)")
        error.exit_code = code  # the fleet's rule over the targets' own codes
        raise error
    return 0


def _output(doc: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(doc, indent=2))
        return
    shard = f" (shard {doc['shard']})" if doc["shard"] else ""
    print(f"fleet{shard}: {doc['targets_planned']} targets: {doc['at_target']} at the target, "
          f"{doc['targets_planned'] - doc['at_target'] - len(doc['refused'])} to upgrade, "
          f"{len(doc['refused'])} refused")
    for group in doc["groups"]:
        if not group["pending"]:
            continue
        names = ", ".join(group["targets"][:5]) + (" ..." if len(group["targets"]) > 5 else "")
        print(f"  from {', '.join(group['current']) or 'base'} ({len(group['targets'])} "
              f"targets: {names}):")
        for rev in group["pending"]:
            kind = "transactional" if rev["transactional"] else "NOT transactional"
            lint_note = f", {len(rev['findings'])} lint finding(s)" if rev["findings"] else ""
            print(f"    {rev['revision']}  {rev['message'] or ''} ({kind}{lint_note})")
    for entry in doc["refused"]:
        print(f"  {entry['name']}: REFUSED (exit {entry['exit_code']}): {entry['error']}")
    print("upgrade would start on every target" if doc["allowed"] else
          "upgrade would be REFUSED on some targets")
