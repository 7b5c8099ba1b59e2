"""The fleet's targets: read from a YAML / JSON-lines file or a query, URLs resolved.

A URL never appears in an error: only the target's name, and the variable or file that was
to hold it. Everything is checked before anything runs: a bad target is a usage error (exit 2)
for the whole fleet, never a surprise halfway through it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from runner.errors import UsageError
from runner.urls import mask_text, parse_url

#: A name is a folder name too (`<run>/<name>/`): no separators, no dot-dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FIELDS = frozenset({"name", "url", "url_env", "url_file", "x"})
_URL_FIELDS = ("url", "url_env", "url_file")


@dataclass(frozen=True)
class Target:
    """One entry as written: where its URL comes from, not the URL itself."""

    name: str
    url: str | None = None
    url_env: str | None = None
    url_file: str | None = None
    x: tuple[tuple[str, str], ...] = ()

    @property
    def x_args(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.x]


@dataclass(frozen=True)
class Resolved:
    """A target with its URL: `url` normalized for our own sessions, `given` with the user's
    driver for env.py (both None: --database-url's, or alembic.ini's)."""

    target: Target
    url: URL | None = field(repr=False)
    given: URL | None = field(repr=False)

    @property
    def name(self) -> str:
        return self.target.name


def load_file(path: Path) -> list[Target]:
    """A YAML list of mappings, or JSON lines (one object a line; `#` lines and blank lines
    skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--targets {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--targets {path}: not UTF-8 text") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    content = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not content:
        raise UsageError(f"--targets {path}: no targets in the file")
    if content[0][1].startswith("{"):
        entries = [(_json_line(path, n, line), f"{path}:{n}") for n, line in content]
    else:
        entries = [(entry, f"{path} entry {i}") for i, entry in enumerate(_yaml(path), 1)]
    return checked([parse_entry(entry, where) for entry, where in entries], str(path))


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--targets {path}:{number}: not a JSON object ({exc.msg})") from None


def _yaml(path: Path) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UsageError(f"--targets {path}{where}: {problem}") from None
    if not isinstance(data, list):
        raise UsageError(f"--targets {path}: expected a YAML list of targets "
                         "(- name: ...) or JSON lines")
    return data


def parse_entry(entry: Any, where: str) -> Target:
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: a target is a mapping with a name, got {type(entry).__name__}")
    unknown = sorted(str(key) for key in entry if key not in _FIELDS)
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)} "
                         f"(a target has {', '.join(sorted(_FIELDS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{where}: name must be 1-128 letters, digits, '.', '_' or '-' "
                         f"(it names the target's artifacts folder), got {mask_text(str(name))!r}")
    given = [key for key in _URL_FIELDS if entry.get(key) is not None]
    if len(given) > 1:
        raise UsageError(f"{where} ({name}): give one of url, url_env, url_file, "
                         f"not {' and '.join(given)}")
    for key in given:
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise UsageError(f"{where} ({name}): {key} must be a non-empty string")
    return Target(name=name, url=entry.get("url"), url_env=entry.get("url_env"),
                  url_file=entry.get("url_file"), x=_x(entry.get("x"), where, name))


def _x(value: Any, where: str, name: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} ({name}): x must be a mapping of -x KEY: VALUE")
    pairs = []
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)) or not str(key):
            raise UsageError(f"{where} ({name}): x.{key} must be a string or a number")
        text = str(item).lower() if isinstance(item, bool) else str(item)
        pairs.append((str(key), text))
    return tuple(pairs)


def checked(targets: list[Target], source: str) -> list[Target]:
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise UsageError(f"{source}: target {target.name!r} is listed twice (names are the "
                             "targets' identity: shards, artifacts folders, fleet.json)")
        seen.add(target.name)
    if not targets:
        raise UsageError(f"{source}: no targets")
    return targets


def resolve(target: Target, default: URL | None, default_given: URL | None,
            environ: Mapping[str, str] = os.environ) -> Resolved:
    """The target's URL, from the file, its variable or its file; else --database-url's."""
    text: str | None = target.url
    if target.url_env is not None:
        text = environ.get(target.url_env)
        if not text:
            raise UsageError(f"target {target.name}: environment variable {target.url_env} "
                             "(its url_env) is not set or empty")
    elif target.url_file is not None:
        path = Path(target.url_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not readable text"
            raise UsageError(f"target {target.name}: url_file {path}: {reason}") from None
        if not text:
            raise UsageError(f"target {target.name}: url_file {path} is empty")
    if text is None:
        return Resolved(target, default, default_given)
    try:
        url = parse_url(text)
    except UsageError as exc:  # parse_url's message masks the URL
        raise UsageError(f"target {target.name}: {exc.message}") from None
    return Resolved(target, url, make_url(text.strip()))


def resolve_all(targets: list[Target], default: URL | None,
                default_given: URL | None) -> list[Resolved]:
    return [resolve(target, default, default_given) for target in targets]


def from_query(url: URL, query: str, *, connect_timeout: float) -> list[Target]:
    """`--targets-query SQL` on the control database (--database-url): one target per row,
    its columns named as a file's fields (name, and optionally url / url_env / url_file, x as
    json or jsonb). Read-only: it runs in a READ ONLY transaction."""
    import psycopg
    from psycopg.rows import dict_row

    from runner.db.connect import connect, first_line

    conn = connect(url, timeout=connect_timeout, autocommit=False,
                   application_name="safe-migrate-fleet")
    try:
        conn.read_only = True  # BEGIN READ ONLY: a query that writes is refused
        with conn.cursor(row_factory=dict_row) as cur:
            try:
                cur.execute(query.encode())
            except psycopg.Error as exc:
                raise UsageError("--targets-query failed: "
                                 f"{first_line(mask_text(str(exc)))}") from None
            if cur.description is None:
                raise UsageError("--targets-query returned no rows (not a SELECT?)")
            rows = cur.fetchall()
        conn.rollback()
    finally:
        conn.close()
    entries = [{key: value for key, value in row.items() if value is not None} for row in rows]
    return checked([parse_entry(entry, f"--targets-query row {i}")
                    for i, entry in enumerate(entries, 1)], "--targets-query")
