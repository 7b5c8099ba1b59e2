"""`safe-migrate upgrade --framework django` on a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time

import psycopg
import pytest
from support import advisory_locks, json_events, open_transaction, run_dir

FAIL_ATOMIC = '''
from django.db import migrations, models


def fail(apps, schema_editor):
    raise RuntimeError("failing on purpose")


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.AddField("product", "weight", models.IntegerField(null=True)),
        migrations.RunPython(fail),
    ]
'''

UNIQUE_CONCURRENTLY = '''
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.RunSQL(
            "CREATE UNIQUE INDEX CONCURRENTLY shop_product_sku_uniq ON shop_product (sku)",
            "DROP INDEX CONCURRENTLY IF EXISTS shop_product_sku_uniq"),
    ]
'''

SLEEPS = '''
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.RunSQL("CREATE TABLE shop_sleepy (id int)"),
        migrations.RunSQL("SELECT pg_sleep(60)"),
    ]
'''


def _applied(sql):
    return {(app, name) for app, name in sql("SELECT app, name FROM django_migrations")}


def test_happy_path_then_nothing_to_do(django_project, sql):
    first = django_project.run("upgrade")
    assert first.code == 0, first.stderr[-2000:]
    applied = _applied(sql)
    # Django's contrib apps from zero, and the project's own apps, each migration once.
    for key in [("auth", "0012_alter_user_first_name_max_length"), ("admin", "0001_initial"),
                ("contenttypes", "0002_remove_content_type_name"), ("sessions", "0001_initial"),
                ("shop", "0003_product_sku_idx"), ("accounts", "0002_customer_tier")]:
        assert key in applied
    count = sql("SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations")[0]
    assert count[0] == count[1] == first.done()["applied"] == len(first.named("migration.done"))
    # post_migrate ran as under manage.py migrate: content types and permissions exist.
    assert sql("SELECT count(*) FROM auth_permission")[0][0] > 0
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
               "'shop_product_sku_idx'::regclass") == [(True,)]
    names = [e["event"] for e in first.events]
    for name in ("run.start", "lock.acquired", "preflight.ok", "schema.snapshot",
                 "migration.start", "migration.done", "verification.ok", "lock.released",
                 "run.done"):
        assert name in names, name
    starts = {e["revision"]: e for e in first.named("migration.start")}
    assert starts["shop.0003_product_sku_idx"]["transactional"] is False
    assert starts["shop.0002_status_retired"]["transactional"] is True
    folder = run_dir(django_project.artifacts)
    run = json.loads((folder / "run.json").read_text())
    assert run["framework"] == "django" and run["outcome"] == "success"
    assert run["version_table"] == "public.django_migrations"
    assert (folder / "pre-step-shop.0003_product_sku_idx.json").is_file()
    assert "CREATE TABLE public.shop_product" in (folder / "schema.diff").read_text()
    assert sql("SELECT outcome, exit_code FROM safe_migrate_runs") == [("success", 0)]

    again = django_project.run("upgrade")
    assert again.code == 0 and again.done()["applied"] == 0
    assert not again.named("migration.start")
    assert _applied(sql) == applied
    assert advisory_locks(sql) == 0


@pytest.mark.slow
def test_eight_runners_apply_each_migration_once(django_project, sql):
    procs = [django_project.spawn("upgrade", "--no-schema-diff") for _ in range(8)]
    results = [(proc.wait(180), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0] * 8, [err[-800:] for _, err in results]
    total, distinct = sql("SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations")[0]
    assert total == distinct
    done = [sum('"migration.done"' in line for line in err.splitlines()) for _, err in results]
    assert sum(done) == total and sorted(done)[-1] == total  # one runner applied them all
    assert advisory_locks(sql) == 0


SETS_NO_TIMEOUT = """
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [migrations.RunSQL("SET lock_timeout = 0")]
"""


@pytest.mark.parametrize("earlier_sets_no_timeout", [False, True])
def test_blocked_migration_bounded_by_lock_timeout_then_completed(django_project, sql,
                                                                  earlier_sets_no_timeout):
    if earlier_sets_no_timeout:  # a migration before it switches the session's timeout off
        django_project.migration("shop", "0001b_no_timeout", SETS_NO_TIMEOUT)
        for app, name in (("shop", "0002_status_retired"), ("accounts", "0001_initial")):
            path = django_project.root / app / "migrations" / f"{name}.py"
            path.write_text(path.read_text().replace('("shop", "0001_initial")',
                                                     '("shop", "0001b_no_timeout")'))
    first = django_project.run("upgrade", "shop:0001_initial", "--no-schema-diff")
    assert first.code == 0, first.stderr[-2000:]
    # accounts.0001 adds a foreign key to shop_product: it needs a lock the blocker holds.
    with open_transaction(django_project.db, "LOCK TABLE shop_product IN ACCESS EXCLUSIVE MODE",
                          hold=3.0) as blocker:
        result = django_project.run("upgrade", "accounts", "--no-schema-diff",
                                    "--lock-timeout", "300ms", "--lock-retries", "10")
    assert result.code == 0, result.stderr[-2000:]
    retries = result.named("migration.retry")
    assert retries and retries[0]["revision"] == "accounts.0001_initial"
    assert retries[0]["sqlstate"] == "55P03"
    assert blocker in retries[0]["blocking_pids"]
    for failed in result.named("migration.failed"):
        assert failed["duration_ms"] < 2000  # each attempt bounded by the lock_timeout
    assert ("accounts", "0001_initial") in _applied(sql)


def test_failing_atomic_migration_exit_5_nothing_recorded(django_project, sql):
    django_project.migration("shop", "0004_fail", FAIL_ATOMIC)
    result = django_project.run("upgrade")
    assert result.code == 5, result.stderr[-2000:]
    assert ("shop", "0004_fail") not in _applied(sql)
    assert ("shop", "0003_product_sku_idx") in _applied(sql)
    assert sql("SELECT count(*) FROM information_schema.columns WHERE table_name = "
               "'shop_product' AND column_name = 'weight'") == [(0,)]
    failed = result.named("migration.failed")[-1]
    assert failed["revision"] == "shop.0004_fail" and failed["file"].endswith("0004_fail.py")
    assert "failing on purpose" in result.error()
    plan = json.loads((run_dir(django_project.artifacts) / "recovery-plan.json").read_text())
    assert plan["status"] == "clean-rollback" and plan["failed_revision"] == "shop.0004_fail"
    assert sql("SELECT outcome, exit_code FROM safe_migrate_runs") == [("migration-failed", 5)]


def test_failing_concurrent_unique_index_exit_6_recovered_then_upgraded(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    sql("INSERT INTO shop_product (sku, name, status) VALUES ('a', 'x', 'draft'), "
        "('a', 'y', 'draft')")
    django_project.migration("shop", "0004_sku_unique", UNIQUE_CONCURRENTLY)
    result = django_project.run("upgrade")
    assert result.code == 6, result.stderr[-2000:]
    assert ("shop", "0004_sku_unique") not in _applied(sql)
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
               "'shop_product_sku_uniq'::regclass") == [(False,)]
    plan = json.loads((run_dir(django_project.artifacts) / "recovery-plan.json").read_text())
    assert plan["status"] == "partial-apply"
    assert [(o["kind"], o["name"]) for o in plan["leftover_objects"]] == [
        ("invalid_index", "shop_product_sku_uniq")]
    assert any("DROP INDEX CONCURRENTLY" in s and "shop_product_sku_uniq" in s
               for s in plan["rollback_sql"])
    assert "--framework django" in " ".join(plan["commands"])
    # The unresolved partial apply blocks the next run (exit 3) until recovered.
    again = django_project.run("upgrade", "--no-schema-diff")
    assert again.code == 3 and "recover" in again.error()

    shown = django_project.run("recover")
    assert shown.code == 0, shown.stderr[-2000:]
    assert shown.named("recovery.plan")[0]["status"] == "partial-apply"
    assert sql("SELECT count(*) FROM pg_index WHERE indexrelid = "
               "'shop_product_sku_uniq'::regclass") == [(1,)]  # showing changes nothing
    done = django_project.run("recover", "--execute", "--yes")
    assert done.code == 0, done.stderr[-2000:]
    assert [e["sql"] for e in done.named("recovery.statement")] == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."shop_product_sku_uniq";']
    assert sql("SELECT to_regclass('shop_product_sku_uniq')") == [(None,)]
    assert sql("SELECT count(*) FROM safe_migrate_runs WHERE outcome = 'partial-apply' "
               "AND resolution = 'recovered'") == [(1,)]
    # The migration's cause fixed (the duplicate gone): upgrade reaches the target.
    sql("DELETE FROM shop_product WHERE name = 'y'")
    final = django_project.run("upgrade", "--no-schema-diff")
    assert final.code == 0, final.stderr[-2000:]
    assert ("shop", "0004_sku_unique") in _applied(sql)
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
               "'shop_product_sku_uniq'::regclass") == [(True,)]


def test_a_re_run_over_an_invalid_index_is_refused(django_project, sql):
    """The IF NOT EXISTS trap, as on the Alembic path: the failed CREATE UNIQUE INDEX
    CONCURRENTLY IF NOT EXISTS left an INVALID index; marked resolved without dropping it, a
    re-run would skip the CREATE and record the migration over an index that enforces nothing
    (it was exit 0)."""
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    sql("INSERT INTO shop_product (sku, name, status) VALUES ('a', 'x', 'draft'), "
        "('a', 'y', 'draft')")
    django_project.migration("shop", "0004_sku_unique", UNIQUE_CONCURRENTLY.replace(
        "CONCURRENTLY shop_product_sku_uniq", "CONCURRENTLY IF NOT EXISTS shop_product_sku_uniq"))
    assert django_project.run("upgrade", "--no-schema-diff").code == 6
    assert django_project.run("recover", "--mark-resolved").code == 0  # "fixed", wrongly
    sql("DELETE FROM shop_product WHERE name = 'y'")
    again = django_project.run("upgrade", "--no-schema-diff")
    assert again.code == 3, again.stderr[-2000:]
    assert "shop_product_sku_uniq" in again.error() and "INVALID" in again.error()
    assert ("shop", "0004_sku_unique") not in _applied(sql)


def test_recover_lists_invalid_objects_no_failed_run_recorded_and_leaves_them(django_project,
                                                                               sql):
    """As on the Alembic path: "nothing to recover", and an invalid index made by hand is named
    as not touched (whoever made it decides), never dropped."""
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    sql("INSERT INTO shop_product (sku, name, status) VALUES ('a', 'x', 'draft'), "
        "('a', 'y', 'draft')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql("CREATE UNIQUE INDEX CONCURRENTLY by_hand_uniq ON shop_product (sku)")
    proc = django_project.spawn("recover", "--execute", "--yes")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "nothing to recover" in out
    assert "not touched: invalid_index public.by_hand_uniq on shop_product" in out
    assert [e["unrecorded"] for e in json_events(err) if e["event"] == "recovery.nothing"] == [1]
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = "
               "'by_hand_uniq'::regclass") == [(False,)]


def test_preflight_refusals_exit_3_with_the_fix(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    behind = django_project.run("upgrade", "shop:0001", "--no-schema-diff")
    assert behind.code == 3 and "behind the database" in behind.error()
    # Inconsistent history: 0003 recorded, its dependency 0002 not.
    sql("DELETE FROM django_migrations WHERE app = 'shop' AND name = '0002_status_retired'")
    inconsistent = django_project.run("upgrade", "--no-schema-diff")
    assert inconsistent.code == 3
    assert "shop.0003_product_sku_idx is applied before its dependency" in inconsistent.error()
    assert "--fake" in inconsistent.error()
    # Conflicts: two leaves in one app.
    for name in ("0004_a", "0004_b"):
        django_project.migration("shop", name, "from django.db import migrations\n\n\n"
                                 "class Migration(migrations.Migration):\n"
                                 "    dependencies = [('shop', '0003_product_sku_idx')]\n")
    conflict = django_project.run("upgrade", "--no-schema-diff")
    assert conflict.code == 3 and "makemigrations --merge shop" in conflict.error()
    assert "0004_a, 0004_b" in conflict.error()
    # A deleted parent: NodeNotFoundError names the missing node and the file naming it.
    (django_project.root / "shop" / "migrations" / "0004_b.py").unlink()
    (django_project.root / "shop" / "migrations" / "0004_a.py").write_text(
        "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
        "    dependencies = [('shop', '0099_gone')]\n")
    missing = django_project.run("upgrade", "--no-schema-diff")
    assert missing.code == 3
    assert "shop.0099_gone" in missing.error() and "0004_a.py" in missing.error()
    assert missing.named("preflight.failed")


def test_sigterm_cancels_the_running_migration_exit_8(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    django_project.migration("shop", "0004_sleepy", SLEEPS)
    proc = django_project.spawn("upgrade", "--no-schema-diff")
    assert proc.stderr is not None
    started = None
    for line in proc.stderr:
        if '"migration.start"' in line and "shop.0004_sleepy" in line:
            started = time.monotonic()
            break
    assert started is not None
    time.sleep(0.5)  # inside pg_sleep
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    rest = proc.stderr.read()
    assert code == 8, rest[-2000:]
    assert time.monotonic() - started < 20
    assert ("shop", "0004_sleepy") not in _applied(sql)
    assert sql("SELECT to_regclass('shop_sleepy')") == [(None,)]
    assert '"lock.released"' in rest
    assert advisory_locks(sql) == 0


KILLED_MID_STEP = '''
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [
        migrations.RunSQL("CREATE INDEX CONCURRENTLY shop_product_name_idx ON shop_product (name)",
                          "DROP INDEX CONCURRENTLY shop_product_name_idx"),
        migrations.RunSQL("SELECT pg_sleep(60)"),
    ]
'''


def test_runner_killed_in_a_non_atomic_migration_recovered_from_the_ledger(django_project, sql):
    assert django_project.run("upgrade", "--no-schema-diff").code == 0
    path = django_project.migration("shop", "0004_name_idx", KILLED_MID_STEP)
    proc = django_project.spawn("upgrade", "--no-schema-diff")
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"migration.start"' in line and "shop.0004_name_idx" in line:
            break
    deadline = time.monotonic() + 20
    while not sql("SELECT to_regclass('shop_product_name_idx')")[0][0]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no cleanup, no recovery plan; the ledger row says "running"
    proc.wait(10)
    # Its backend goes on (pg_sleep) until it notices; recover refuses while it runs.
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'safe-migrate-migration'")
    refused = django_project.run("upgrade", "--no-schema-diff")
    assert refused.code == 3 and "not resolved" in refused.error()
    done = django_project.run("recover", "--execute", "--yes")
    assert done.code == 0, done.stderr[-2000:]
    plan = done.named("recovery.plan")[0]
    assert plan["status"] == "partial-apply" and plan["leftovers"] == 1
    assert sql("SELECT to_regclass('shop_product_name_idx')") == [(None,)]
    path.write_text(KILLED_MID_STEP.replace('        migrations.RunSQL("SELECT pg_sleep(60)"),\n',
                                            ""))
    final = django_project.run("upgrade", "--no-schema-diff")
    assert final.code == 0, final.stderr[-2000:]
    assert ("shop", "0004_name_idx") in _applied(sql)


def test_model_changes_without_a_migration_warn_or_refuse(django_project, sql):
    models = django_project.root / "shop" / "models.py"
    models.write_text(models.read_text().replace(
        "    name = models.CharField(max_length=200)\n",
        "    name = models.CharField(max_length=200)\n"
        "    weight = models.IntegerField(null=True)\n"))
    refused = django_project.run("upgrade", "--no-schema-diff", "--model-changes", "error")
    assert refused.code == 3
    assert "makemigrations shop" in refused.error() and "makemigrations --check" in (
        refused.error())
    assert sql("SELECT to_regclass('django_migrations')") == [(None,)]  # nothing ran
    warned = django_project.run("upgrade", "--no-schema-diff")  # default: warn
    assert warned.code == 0, warned.stderr[-2000:]
    [event] = warned.named("preflight.model_changes")
    assert event["apps"] == {"shop": ["0004_product_weight"]}
    assert event["fix"] == "python manage.py makemigrations shop"


FILL = '''import os

from django.db import migrations


def fill(apps, schema_editor):
    with open(os.path.join(os.environ["SM_FILL"], "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
'''

NEVER = '''from django.db import migrations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0004_fill")]
    operations = [migrations.RunSQL("CREATE TABLE never (id int)", "DROP TABLE never")]
'''


def test_without_the_ledger_a_non_atomic_migration_that_cannot_be_recorded_does_not_start(
        django_project, sql, small_disk, monkeypatch):
    """--no-ledger on a full disk: the artifacts would be the only record of what the
    non-atomic migration could leave behind, so it does not start (exit 2, as on the
    Alembic path); the atomic one before it stays applied."""
    django_project.migration("shop", "0004_fill", FILL)
    django_project.migration("shop", "0005_never", NEVER)
    django_project.artifacts = small_disk / "artifacts"
    monkeypatch.setenv("SM_FILL", str(small_disk))
    result = django_project.run("upgrade", "--no-ledger", "--no-schema-diff", "--lint", "off")
    message = result.error()
    assert result.code == 2, message
    assert "shop.0005_never" in message and "did not start" in message
    assert "No space left on device" in message
    assert sql("SELECT to_regclass('never') IS NULL") == [(True,)]
    assert sql("SELECT name FROM django_migrations WHERE app = 'shop' ORDER BY id DESC "
               "LIMIT 1") == [("0004_fill",)]
