"""A new column, then a data migration that fills it (RunPython, reversible)."""
from django.db import migrations, models


def set_tiers(apps, schema_editor):
    Customer = apps.get_model("accounts", "Customer")
    Customer.objects.filter(email__endswith="@example.com").update(tier="staff")


def unset_tiers(apps, schema_editor):
    Customer = apps.get_model("accounts", "Customer")
    Customer.objects.update(tier="basic")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="customer",
            name="tier",
            field=models.CharField(default="basic", max_length=16),
        ),
        migrations.RunPython(set_tiers, unset_tiers),
    ]
