"""One model per way of declaring a publication."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from twisted_ws4redis.models import PublishableModel, publish_model


class Note(PublishableModel):
    """Fixed audience, a field list: ``secret`` is never published."""

    text = models.CharField(max_length=200)
    secret = models.CharField(max_length=200, default="")
    created = models.DateTimeField(default=timezone.now)

    ws4redis_facility = "notes"
    ws4redis_audience = {"broadcast": True}
    ws4redis_fields = ["text", "created"]


class DirectMessage(PublishableModel):
    """Methods: the two participants hear it, the data is the model's own."""

    sender = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    text = models.CharField(max_length=200)

    ws4redis_facility = "direct"

    def get_ws4redis_audience(self) -> dict:
        return {"users": [self.sender.username, self.recipient.username]}

    def get_ws4redis_data(self) -> dict:
        return {"from": self.sender.username, "to": self.recipient.username, "text": self.text}


@publish_model(facility="tasks", audience={"groups": ["staff"]}, fields="__all__", expire=60)
class Task(models.Model):
    """A plain model with the decorator: every field, values DjangoJSONEncoder writes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=200)
    cost = models.DecimalField(max_digits=8, decimal_places=2)
    due = models.DateField()


class Ticket(models.Model):
    """A plain model registered in ChatAppConfig.ready()."""

    title = models.CharField(max_length=200)
    owner = models.CharField(max_length=200, default="")
