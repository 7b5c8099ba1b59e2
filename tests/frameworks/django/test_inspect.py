"""`plan` and `status` with --framework django: read-only views of the same run."""

from __future__ import annotations

import json


def test_plan_lists_migrations_in_order_with_sql_and_atomicity_and_changes_nothing(
        django_project, sql):
    doc = json.loads(_stdout(django_project, "plan", "shop", "--format", "json"))
    assert doc["preflight"]["ok"] and doc["allowed"]
    pending = {p["revision"]: p for p in doc["pending"]}
    assert list(pending) == ["shop.0001_initial", "shop.0002_status_retired",
                             "shop.0003_product_sku_idx"]
    assert 'CREATE TABLE "shop_product"' in pending["shop.0001_initial"]["sql"]
    index = pending["shop.0003_product_sku_idx"]
    assert index["transactional"] is False
    assert "AddIndexConcurrently" in index["non_transactional_reasons"]
    assert "CREATE INDEX CONCURRENTLY" in index["sql"]
    assert pending["shop.0001_initial"]["transactional"] is True
    # Read-only: not even django_migrations is created.
    assert sql("SELECT to_regclass('django_migrations')") == [(None,)]


def test_status_shows_applied_per_app_lock_and_last_run(django_project, sql):
    assert django_project.run("upgrade", "shop", "--no-schema-diff").code == 0
    report = json.loads(_stdout(django_project, "status", "--format", "json"))
    assert report["framework"] == "django"
    assert report["apps"]["shop"] == [
        {"name": "0001_initial", "applied": True}, {"name": "0002_status_retired",
                                                    "applied": True},
        {"name": "0003_product_sku_idx", "applied": True}]
    assert "accounts.0001_initial" in report["pending"]
    assert report["pending_count"] == len(report["pending"]) > 0
    assert report["lock_holders"] == [] and report["invalid_objects"] == []
    assert report["last_run"]["outcome"] == "success"
    assert report["unresolved"] == []


def _stdout(project, *args: str) -> str:
    proc = project.spawn(*args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return out
