"""Fleet test helpers: tenant schemas, targets files, fleet.json."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL
from support import Project, libpq, write_project

REVISIONS = [
    ("r1", 'op.create_table("accounts", sa.Column("id", sa.BigInteger, primary_key=True),\n'
           '                sa.Column("email", sa.Text, nullable=False))'),
    ("r2", 'op.add_column("accounts", sa.Column("nick", sa.Text))'),
    ("r3", 'op.create_index("ix_accounts_email", "accounts", ["email"])'),
]


def tenant_project(root: Path, revisions: list[tuple[str, str]] | None = None) -> Project:
    """Schema per tenant: env.py sets search_path and version_table_schema from -x tenant."""
    return write_project(root, revisions or REVISIONS, "tenant")


def create_schemas(db: URL, names: Iterable[str]) -> None:
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute("".join(f'CREATE SCHEMA "{name}";' for name in names).encode())


def versions(db: URL, schemas: list[str]) -> dict[str, list[str]]:
    """Each schema's alembic_version rows (empty: no table), in one query."""
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        present = {row[0] for row in conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'alembic_version' AND table_schema = ANY(%s)", (schemas,))}
        found: dict[str, list[str]] = {name: [] for name in schemas}
        if present:
            union = " UNION ALL ".join(
                f"SELECT '{s}', version_num FROM \"{s}\".alembic_version" for s in present)
            for schema, version in conn.execute(union.encode()):
                found[schema].append(version)
    return found


def ledger_rows(db: URL, schema: str) -> list[dict[str, Any]]:
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass(%s)", (f"{schema}.safe_migrate_runs",)
                            ).fetchone()[0]:  # type: ignore[index]
            return []
        cur = conn.execute(f'SELECT outcome, exit_code FROM "{schema}".safe_migrate_runs'.encode())
        return [{"outcome": o, "exit_code": c} for o, c in cur.fetchall()]


def tenants_yaml(path: Path, tenants: list[str], extra: str = "") -> Path:
    path.write_text("".join(f"- name: {t}\n  x: {{tenant: {t}}}\n" for t in tenants) + extra)
    return path


def fleet_json(artifacts: Path) -> dict[str, Any]:
    found = sorted(artifacts.glob("*/fleet.json"), key=lambda p: p.stat().st_mtime)
    assert found, f"no fleet.json under {artifacts}"
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["targets"]}


Sql = Callable[..., list[tuple[Any, ...]]]
