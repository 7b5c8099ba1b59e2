from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Product",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("sku", models.CharField(max_length=32)),
                ("name", models.CharField(max_length=200)),
                ("status", models.CharField(
                    choices=[("draft", "Draft"), ("active", "Active")], default="draft",
                    max_length=16)),
            ],
        ),
    ]
