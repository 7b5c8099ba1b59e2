"""The fleet's options, for upgrade, status and plan: kept apart from the fleet's code, so that
building a command's parser imports nothing heavy."""

from __future__ import annotations

import argparse
import os

from runner.errors import UsageError

#: The fleet's own options (upgrade's; status and plan take --targets and --shard).
FLEET_ONLY = ("parallel", "canary", "max_failures", "fleet_snapshots")


def add_arguments(parser: argparse.ArgumentParser, *, runs: bool = True) -> None:
    group = parser.add_argument_group("fleet (many databases or tenant schemas)")
    env = os.environ.get
    group.add_argument("--targets", metavar="FILE", default=env("SAFE_MIGRATE_TARGETS"),
                       help="YAML list or JSON lines of targets: name, url | url_env | "
                            "url_file, x (env SAFE_MIGRATE_TARGETS)")
    group.add_argument("--targets-query", metavar="SQL",
                       default=env("SAFE_MIGRATE_TARGETS_QUERY"),
                       help="targets from a query on --database-url (the control database): "
                            "one row per target, columns named as the file's fields")
    group.add_argument("--shard", metavar="I/N", default=None,
                       help="only the targets whose name hashes to shard I of N (default: "
                            "JOB_COMPLETION_INDEX / SAFE_MIGRATE_SHARDS)")
    if not runs:
        return
    group.add_argument("--parallel", metavar="N", default=env("SAFE_MIGRATE_PARALLEL", "1"),
                       help="worker processes (default 1)")
    group.add_argument("--canary", metavar="K", default=env("SAFE_MIGRATE_CANARY", "0"),
                       help="the first K targets must all succeed before the rest start")
    group.add_argument("--max-failures", metavar="F", default=env("SAFE_MIGRATE_MAX_FAILURES"),
                       help="start no new target after F failures (default: no limit)")
    group.add_argument("--fleet-snapshots", action="store_true",
                       default=env("SAFE_MIGRATE_FLEET_SNAPSHOTS", "") in ("1", "true"),
                       help="pg_dump snapshots and schema.diff per migrated target (default "
                            "off for fleets)")


def requested(args: argparse.Namespace) -> bool:
    """Whether this is a fleet run; fleet-only options without targets are refused."""
    if getattr(args, "targets", None) or getattr(args, "targets_query", None):
        if args.targets and args.targets_query:
            raise UsageError("give --targets or --targets-query, not both")
        return True
    if getattr(args, "shard", None):
        raise UsageError("--shard needs --targets or --targets-query")
    for name in FLEET_ONLY:
        value = getattr(args, name, None)
        if name == "fleet_snapshots" and value:
            raise UsageError("--fleet-snapshots needs --targets or --targets-query")
        if (name in ("parallel", "canary") and value not in (None, "1", "0")) or (
                name == "max_failures" and value is not None):
            raise UsageError(f"--{name.replace('_', '-')} needs --targets or --targets-query")
    return False
