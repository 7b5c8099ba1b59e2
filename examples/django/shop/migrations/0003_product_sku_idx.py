"""CREATE INDEX CONCURRENTLY: it cannot run in a transaction, so the migration is atomic = False."""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0002_status_retired")]

    operations = [
        AddIndexConcurrently(
            model_name="product",
            index=models.Index(fields=["sku"], name="shop_product_sku_idx"),
        ),
    ]
