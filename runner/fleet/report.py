"""fleet.json, the console summary, and the fleet's exit code.

The exit code rule (README "Fleets"): the most severe of the targets' codes, in the order
1 > 6 > 5 > 3 > 2 > 7 > 4 > 8 > 0: first what needs a person (a bug, a partial apply, a failed
migration, a refusal, a configuration error), then what a retry fixes (unreachable, lock busy,
interrupted). So a Job retries a shard only when every failure in it is retry-safe. Targets left
unstarted by SIGTERM count as 8 (a retry converges); targets left unstarted by a failed canary or
--max-failures add no code of their own (the failure that stopped the run gives it). fleet.json
tells them apart: `not_started` and `stopped_by`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any, TextIO

from runner.errors import ExitCode
from runner.fleet.pool import BY_INTERRUPT, NOT_STARTED, Result

SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.INTERNAL, ExitCode.PARTIAL_APPLY, ExitCode.MIGRATION_FAILED, ExitCode.PREFLIGHT,
    ExitCode.USAGE, ExitCode.UNREACHABLE, ExitCode.LOCK_BUSY, ExitCode.INTERRUPTED)


def overall_code(results: list[Result], stopped_by: str | None) -> ExitCode:
    codes = {r["exit_code"] for r in results if r["exit_code"] is not None}
    if stopped_by == BY_INTERRUPT and any(r["outcome"] == NOT_STARTED for r in results):
        codes.add(int(ExitCode.INTERRUPTED))
    return next((code for code in SEVERITY if int(code) in codes), ExitCode.OK)


def counts(results: list[Result]) -> dict[str, int]:
    return dict(sorted(Counter(r["outcome"] for r in results).items()))


def build(header: dict[str, Any], results: list[Result], stopped_by: str | None) -> dict[str, Any]:
    code = overall_code(results, stopped_by)
    return {**header, "exit_code": int(code), "targets_run": len(results),
            "counts": counts(results),
            "not_started": sum(r["outcome"] == NOT_STARTED for r in results),
            "stopped_by": stopped_by, "targets": results}


def print_summary(report: dict[str, Any], out: TextIO | None = None) -> None:
    """For people and CI logs: counts, then each target that did not succeed."""
    stream = out or sys.stdout
    shard = f" (shard {report['shard']})" if report.get("shard") else ""
    parts = ", ".join(f"{n} {outcome}" for outcome, n in report["counts"].items())
    print(f"fleet{shard}: {report['targets_run']} targets: {parts or 'none'}; "
          f"exit {report['exit_code']}", file=stream)
    if report["stopped_by"]:
        print(f"  stopped early ({report['stopped_by']}): {report['not_started']} not started",
              file=stream)
    for target in report["targets"]:
        if target["exit_code"]:
            print(f"  {target['name']}: exit {target['exit_code']} {target['outcome']}: "
                  f"{target.get('error') or ''}".rstrip(": "), file=stream)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"
