"""The user chat's messages: stored, so a page shows the recent ones, and
published to the addressee once the save commits (a PublishableModel)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from twisted_ws4redis.models import PublishableModel


class UserMessage(PublishableModel):
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    text = models.CharField(max_length=2000)
    sent = models.DateTimeField(default=timezone.now, db_index=True)

    ws4redis_facility = "userchat"
    # No persisted copy (WS4REDIS_EXPIRE): the page loads the history from the
    # database, where the copy would show the last message twice.
    ws4redis_expire = 0

    def get_ws4redis_audience(self) -> dict:
        # The addressee's pages; the sender's page shows what it sent itself.
        return {"users": [self.recipient.get_username()]}

    def get_ws4redis_data(self) -> dict:
        """What a page shows, live or from the history."""
        return {
            "from": self.sender.get_username(),
            "to": self.recipient.get_username(),
            "text": self.text,
            "sent": self.sent,
        }

    @classmethod
    def history(cls, user, limit: int = 50) -> list[dict]:
        """The last ``limit`` messages ``user`` sent or received, oldest first."""
        recent = (
            cls.objects.filter(Q(sender=user) | Q(recipient=user))
            .select_related("sender", "recipient")
            .order_by("-sent", "-pk")[:limit]
        )
        return [message.get_ws4redis_data() for message in reversed(recent)]
