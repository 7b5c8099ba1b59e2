"""`verify --framework django`: the stairway on a scratch database of the test server."""

from __future__ import annotations

IRREVERSIBLE = '''
from django.db import migrations


def forwards(apps, schema_editor):
    pass


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_sku_idx")]
    operations = [migrations.RunPython(forwards)]  # no reverse_code: irreversible
'''


def _verify(django_project, server):
    proc = django_project.spawn("verify")
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_contrib_apps_and_the_example_pass_the_stairway(django_project, server, sql):
    django_project.db = server.url  # the scratch database is created on this server
    code, out, err = _verify(django_project, server)
    assert code == 0, err[-2000:]
    # auth, admin, contenttypes, sessions and the example's apps: 23 migrations, 3 steps each.
    assert out.startswith("verify: 23 migration(s), 69 step(s), 0 failed"), out
    assert '"direction": "re-upgrade"' in err and "auth.0012_alter_user_first_name" in err


def test_names_the_first_irreversible_migration(django_project, server):
    django_project.db = server.url
    django_project.migration("shop", "0004_irreversible", IRREVERSIBLE)
    code, out, err = _verify(django_project, server)
    assert code == 3, err[-2000:]
    assert "FAILED shop.0004_irreversible downgrade: IrreversibleError" in out
    assert "the first: shop.0004_irreversible downgrade" in err
