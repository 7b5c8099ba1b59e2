from django.db import models


class Customer(models.Model):
    email = models.EmailField()
    favourite = models.ForeignKey("shop.Product", null=True, on_delete=models.SET_NULL)
    tier = models.CharField(max_length=16, default="basic")
