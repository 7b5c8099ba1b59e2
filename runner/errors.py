"""One error hierarchy; every error carries the exit code the SPEC gives it.

`runner.main` is the only place that turns these into a process exit code.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitCode(enum.IntEnum):
    """The SPEC's exit-code table. Deploy files (podFailurePolicy) are tested against it."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PREFLIGHT = 3
    LOCK_BUSY = 4
    MIGRATION_FAILED = 5
    PARTIAL_APPLY = 6
    UNREACHABLE = 7
    INTERRUPTED = 8


#: Exit codes that a Kubernetes Job may retry (SPEC: "safe for the Job to retry?").
RETRY_SAFE: frozenset[ExitCode] = frozenset(
    {ExitCode.LOCK_BUSY, ExitCode.UNREACHABLE, ExitCode.INTERRUPTED}
)

#: What each code means, in a few words (--help's epilog; the README's table says more).
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success, or nothing to do",
    ExitCode.INTERNAL: "internal error (a bug: please report it)",
    ExitCode.USAGE: "usage or configuration error (bad flag or URL, missing file or package)",
    ExitCode.PREFLIGHT: "preflight refused (several heads, unknown revision, drift, lint, an "
                        "unresolved partial apply, a target behind the database...)",
    ExitCode.LOCK_BUSY: "advisory lock held by another run past --advisory-lock-wait",
    ExitCode.MIGRATION_FAILED: "a migration failed and was rolled back cleanly",
    ExitCode.PARTIAL_APPLY: "partial apply, or verification failed: see the recovery plan",
    ExitCode.UNREACHABLE: "database unreachable, authentication failed, connection lost",
    ExitCode.INTERRUPTED: "interrupted (SIGTERM/SIGINT): the migration was rolled back",
}


#: The outcome names run.json, the ledger, run.done and fleet.json give each exit code.
OUTCOMES: dict[ExitCode, str] = {
    ExitCode.OK: "success", ExitCode.USAGE: "usage-error", ExitCode.PREFLIGHT: "preflight-refused",
    ExitCode.LOCK_BUSY: "lock-busy", ExitCode.MIGRATION_FAILED: "migration-failed",
    ExitCode.PARTIAL_APPLY: "partial-apply", ExitCode.UNREACHABLE: "unreachable",
    ExitCode.INTERRUPTED: "interrupted",
}


def outcome_name(code: ExitCode) -> str:
    return OUTCOMES.get(code, "internal-error")


def exit_code_table() -> str:
    """The exit codes as --help shows them, from this module alone."""
    lines = ["exit codes (* = safe for a Job to retry):"]
    for code in ExitCode:
        mark = "*" if code in RETRY_SAFE else " "
        lines.append(f"  {int(code)}{mark} {MEANINGS[code]}")
    return "\n".join(lines)


class SafeMigrateError(Exception):
    """Base of every error the runner reports as a one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class UsageError(SafeMigrateError):
    """Bad flag, bad duration, missing alembic.ini, malformed URL, unusable pg_dump..."""

    exit_code = ExitCode.USAGE


class LintUnavailableError(UsageError):
    """squawk is missing or broken: only `--lint error` insists on it; warn mode goes on."""


class PreflightError(SafeMigrateError):
    """The history or the database state forbids starting (multiple heads, unknown revision...)."""

    exit_code = ExitCode.PREFLIGHT


class MultipleHeadsError(PreflightError):
    def __init__(self, heads: list[str], merge_command: str) -> None:
        super().__init__(
            f"multiple heads {', '.join(heads)}; merge them first: {merge_command}",
            heads=heads,
        )
        self.heads = heads
        self.merge_command = merge_command


class UnknownDatabaseRevisionError(PreflightError):
    def __init__(self, revisions: list[str]) -> None:
        super().__init__(
            f"the database is at revision {', '.join(revisions)}, which the migration scripts do "
            "not contain; deploy the code that has it, or after review run "
            f"`alembic stamp --purge <revision>`",
            revisions=revisions,
        )
        self.revisions = revisions


class LockBusyError(SafeMigrateError):
    exit_code = ExitCode.LOCK_BUSY


class MigrationFailedError(SafeMigrateError):
    """A migration failed and its transaction rolled back: nothing of it is left."""

    exit_code = ExitCode.MIGRATION_FAILED


class PartialApplyError(SafeMigrateError):
    """A failed migration committed part of its work, or verification found a mismatch."""

    exit_code = ExitCode.PARTIAL_APPLY


class DatabaseUnreachableError(SafeMigrateError):
    exit_code = ExitCode.UNREACHABLE


class InterruptedRunError(SafeMigrateError):
    exit_code = ExitCode.INTERRUPTED
