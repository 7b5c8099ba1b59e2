from django.db import models


class Product(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        RETIRED = "retired"

    sku = models.CharField(max_length=32)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)

    class Meta:
        indexes = [models.Index(fields=["sku"], name="shop_product_sku_idx")]
