"""An enum-like choice change: Django records it in the state; PostgreSQL sees no DDL."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="product",
            name="status",
            field=models.CharField(
                choices=[("draft", "Draft"), ("active", "Active"), ("retired", "Retired")],
                default="draft", max_length=16),
        ),
    ]
