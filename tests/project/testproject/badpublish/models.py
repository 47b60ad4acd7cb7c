"""A mis-declared publishable model, installed only by the test of its check
(tests/test_models.py): no audience, and a field it does not have."""

from django.db import models

from twisted_ws4redis.models import PublishableModel


class Forgotten(PublishableModel):
    text = models.CharField(max_length=200)

    ws4redis_facility = "forgotten"
    ws4redis_fields = ["text", "nope"]
