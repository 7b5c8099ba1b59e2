"""`safe-migrate upgrade --framework django --lint`: squawk over the pending migrations' SQL
before anything runs, as on the Alembic path."""

from __future__ import annotations

from support import advisory_locks, json_events, spawn

# A plain CREATE INDEX takes a SHARE lock that blocks writes: squawk's
# require-concurrent-index-creation.
LOCKING_INDEX = '''
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.RunSQL("CREATE INDEX shop_product_name_ix ON shop_product (name)",
                          "DROP INDEX shop_product_name_ix"),
    ]
'''
RULE = "require-concurrent-index-creation"
STEP = "shop.0004_name_ix"


def _applied(sql, app: str, name: str) -> bool:
    return bool(sql("SELECT 1 FROM django_migrations WHERE app = %s AND name = %s",
                    (app, name)))


def _index_exists(sql) -> bool:
    return sql("SELECT to_regclass('shop_product_name_ix') IS NOT NULL")[0][0]


def test_lint_error_refuses_before_anything_runs_exit_3(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff", "--lint", "off").code == 0
    runs_before = sql("SELECT count(*) FROM safe_migrate_runs")[0][0]
    django_project.migration("shop", "0004_name_ix", LOCKING_INDEX)

    refused = django_project.run("upgrade", "--no-schema-diff", "--lint", "error")

    assert refused.code == 3, refused.stderr[-2000:]
    findings = refused.named("lint.finding")
    assert [(f["revision"], f["rule"]) for f in findings if f["rule"] == RULE] == [(STEP, RULE)]
    assert findings[0]["path"].endswith("shop/migrations/0004_name_ix.py")
    assert "CREATE INDEX shop_product_name_ix" in (findings[0]["statement"] or "")
    assert RULE in refused.error() and STEP in refused.error()
    assert refused.named("preflight.failed")
    # Nothing ran: no lock taken, no migration started, no ledger row, no index.
    assert not refused.named("lock.acquired") and not refused.named("migration.start")
    assert not _applied(sql, "shop", "0004_name_ix") and not _index_exists(sql)
    assert sql("SELECT count(*) FROM safe_migrate_runs")[0][0] == runs_before
    assert advisory_locks(sql) == 0


def test_lint_warn_reports_then_runs_and_off_skips(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff", "--lint", "off").code == 0
    django_project.migration("shop", "0004_name_ix", LOCKING_INDEX)

    warned = django_project.run("upgrade", "--no-schema-diff")  # warn: the default

    assert warned.code == 0, warned.stderr[-2000:]
    assert RULE in [f["rule"] for f in warned.named("lint.finding")]
    done = warned.named("lint.done")
    assert done and done[0]["revisions"] == 1 and done[0]["findings"] >= 1
    # Findings come before the run: the first finding precedes the lock.
    names = [e["event"] for e in warned.events]
    assert names.index("lint.finding") < names.index("lock.acquired")
    assert _applied(sql, "shop", "0004_name_ix") and _index_exists(sql)

    sql("DELETE FROM django_migrations WHERE app = 'shop' AND name = '0004_name_ix'")
    sql("DROP INDEX shop_product_name_ix")
    quiet = django_project.run("upgrade", "--no-schema-diff", "--lint", "off")
    assert quiet.code == 0, quiet.stderr[-2000:]
    assert not quiet.named("lint.finding") and not quiet.named("lint.done")
    assert _applied(sql, "shop", "0004_name_ix")


def test_lint_bad_mode_from_the_environment_exit_2(django_project, sql):
    bad = spawn(django_project.args("upgrade", "--no-schema-diff"), cwd=django_project.root,
                env={"SAFE_MIGRATE_LINT": "sometimes"})
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2, err[-2000:]
    assert "--lint: expected one of error, warn, off, got 'sometimes'" in err
    assert not [e for e in json_events(err) if e["event"] == "lock.acquired"]
    assert sql("SELECT to_regclass('django_migrations')")[0][0] is None
