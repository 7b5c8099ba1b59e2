"""An atomic Django migration that ends its own transaction (RunSQL("COMMIT")) is no longer
one unit: exit 6 (partial apply), as on the Alembic path."""

from __future__ import annotations

import json

import pytest
from support import run_dir

TEMPLATE = '''
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("failing on purpose")


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.RunSQL("CREATE TABLE shop_first (id int)"),
        {middle}
        migrations.RunSQL("CREATE TABLE shop_second (id int)"),
        {last}
    ]
'''
STEP = "shop.0004_own_commit"


def _exists(sql, table: str) -> bool:
    return sql("SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]


@pytest.mark.parametrize(("statement", "first_kept"), [("COMMIT", True), ("ROLLBACK", False)])
def test_own_commit_or_rollback_then_success_exit_6(django_project, sql, statement, first_kept):
    assert django_project.run("upgrade", "--no-schema-diff", "--lint", "off").code == 0
    django_project.migration("shop", "0004_own_commit", TEMPLATE.format(
        middle=f'migrations.RunSQL("{statement}"),', last=""))

    result = django_project.run("upgrade", "--no-schema-diff", "--lint", "off")

    assert result.code == 6, result.stderr[-2000:]
    assert "ran its own COMMIT or ROLLBACK" in result.error() and STEP in result.error()
    failed = result.named("migration.failed")
    assert [(e["revision"], e["partial"]) for e in failed] == [(STEP, True)]
    # What the migration did is split: COMMIT kept the first part, ROLLBACK undid it.
    assert _exists(sql, "shop_first") is first_kept
    assert _exists(sql, "shop_second")
    run = json.loads((run_dir(django_project.artifacts) / "run.json").read_text())
    assert run["outcome"] != "success"
    assert sql("SELECT exit_code FROM safe_migrate_runs ORDER BY started_at DESC LIMIT 1") \
        == [(6,)]


def test_own_commit_then_failure_is_partial_exit_6(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff", "--lint", "off").code == 0
    django_project.migration("shop", "0004_own_commit", TEMPLATE.format(
        middle='migrations.RunSQL("COMMIT"),', last="migrations.RunPython(fail),"))

    result = django_project.run("upgrade", "--no-schema-diff", "--lint", "off")

    assert result.code == 6, result.stderr[-2000:]
    assert "committing part of its work" in result.error()
    assert [e["partial"] for e in result.named("migration.failed")] == [True]
    assert _exists(sql, "shop_first")  # committed by the migration's own COMMIT
    assert not sql("SELECT 1 FROM django_migrations WHERE app = 'shop' "
                   "AND name = '0004_own_commit'")


def test_savepoint_rollback_stays_atomic(django_project, sql):
    """ROLLBACK TO SAVEPOINT does not end the transaction: a plain success (exit 0)."""
    assert django_project.run("upgrade", "--no-schema-diff", "--lint", "off").code == 0
    django_project.migration("shop", "0004_own_commit", TEMPLATE.format(
        middle='migrations.RunSQL("SAVEPOINT s1; ROLLBACK TO SAVEPOINT s1"),', last=""))

    result = django_project.run("upgrade", "--no-schema-diff", "--lint", "off")

    assert result.code == 0, result.stderr[-2000:]
    assert not result.named("migration.failed")
    assert _exists(sql, "shop_first") and _exists(sql, "shop_second")
