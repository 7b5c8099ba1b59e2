"""`--shard I/N`: a stable slice of the targets, so that the N pods of an Indexed Job cover
every target exactly once.

Target `name` belongs to shard `blake2b(name, 8 bytes) mod N` (big-endian unsigned): it depends
on the name alone, never on the file's order, so a reordered or grown file keeps every other
target where it was, and every target is in exactly one shard.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from runner.errors import UsageError

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in an Indexed Job's pods
SHARDS_ENV = "SAFE_MIGRATE_SHARDS"  # the Job's `completions`, set in the manifest


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index


def shard_of(name: str, count: int) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    index_text, sep, count_text = text.strip().partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise UsageError(f"{flag}: expected I/N (e.g. 0/4), got {text!r}") from None
    if not sep or count < 1 or not 0 <= index < count:
        raise UsageError(f"{flag}: expected I/N with 0 <= I < N, got {text!r}")
    return Shard(index, count)


def shard_from(flag: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """--shard, else JOB_COMPLETION_INDEX with SAFE_MIGRATE_SHARDS; None: every target."""
    if flag:
        return parse_shard(flag)
    index, count = environ.get(INDEX_ENV), environ.get(SHARDS_ENV)
    if index is None and count is None:
        return None
    if index is None:
        raise UsageError(f"{SHARDS_ENV} is set but {INDEX_ENV} is not: pass --shard I/N")
    if count is None:
        # Every pod of the Indexed Job would take every target: refused, not guessed.
        raise UsageError(f"{INDEX_ENV} is set (an Indexed Job) but {SHARDS_ENV} is not: set it "
                         "to the Job's completions, or pass --shard I/N")
    return parse_shard(f"{index}/{count}", flag=f"{INDEX_ENV}/{SHARDS_ENV}")
