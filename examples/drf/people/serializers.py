from rest_framework import serializers

from .models import Person


class PersonSerializer(serializers.ModelSerializer):
    class Meta:
        model = Person
        fields = ["id", "name", "age"]
        extra_kwargs = {
            "name": {"min_length": 1, "max_length": 100},
            "age": {"min_value": 0, "max_value": 150},
        }
