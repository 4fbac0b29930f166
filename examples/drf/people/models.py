from django.core.validators import MaxValueValidator, MinLengthValidator
from django.db import models


class Person(models.Model):
    name = models.CharField(max_length=100, validators=[MinLengthValidator(1)])
    age = models.PositiveSmallIntegerField(validators=[MaxValueValidator(150)])

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.name
