from django.apps import AppConfig


class ChatAppConfig(AppConfig):
    name = "testproject.chatapp"
    label = "chatapp"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        # A model registered from outside, as one of another app would be.
        from twisted_ws4redis.models import publish_model

        from .models import Ticket

        publish_model(Ticket, facility="tickets", audience={"broadcast": True}, fields=["title"])
