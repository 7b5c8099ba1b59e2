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
