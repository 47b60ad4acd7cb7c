"""The three chats of the demo.

The broadcast chat publishes straight from the browser's websocket
(``publish-broadcast``, a publish op of ws4redis.v2, whose history lets a page
that reconnects get what it missed). The user and group chats send through a Django view
instead, which knows who is writing: the sender cannot be forged and only the
addressees receive the message. The group chat publishes with ``RedisPublisher``;
the user chat stores each message (models.UserMessage, a PublishableModel, which
publishes it once saved), so its page shows the recent ones from the database. That
holds because their websockets may not publish at all (websocket_access.py,
the site's WS4REDIS_ALLOWED_CHANNELS): a client is not bound to our pages' URLs.
"""

import json

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from twisted_ws4redis.publisher import RedisPublisher
from twisted_ws4redis.redis_store import SELF, RedisMessage

from .forms import GroupMessageForm, UserMessageForm
from .models import UserMessage

WELCOME = "Hello everybody"


def home(request):
    return render(request, "chatserver/home.html")


def chat(request):
    # Persisted (WS4REDIS_EXPIRE), so every page load shows it first.
    RedisPublisher(facility="chat", broadcast=True).publish_message(RedisMessage(WELCOME))
    return render(request, "chatserver/chat.html")


def _publish(request, form, facility: str, **audience) -> JsonResponse:
    message = json.dumps(
        {"from": request.user.get_username(), "to": form.addressee, "text": form.cleaned_data["message"]}
    )
    received = RedisPublisher(facility=facility, request=request, **audience).publish_message(RedisMessage(message))
    return JsonResponse({"ok": True, "received": received})


def _invalid(form) -> JsonResponse:
    return JsonResponse({"ok": False, "errors": form.errors.get_json_data()}, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def userchat(request):
    form = UserMessageForm(request.user, request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            return _invalid(form)
        message = UserMessage.objects.create(
            sender=request.user, recipient=form.cleaned_data["user"], text=form.cleaned_data["message"]
        )
        return JsonResponse({"ok": True, "id": message.pk})
    return render(request, "chatserver/userchat.html", {"form": form, "history": UserMessage.history(request.user)})


@login_required
@require_http_methods(["GET", "POST"])
def groupchat(request):
    form = GroupMessageForm(request.user, request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            return _invalid(form)
        group = form.cleaned_data["group"]
        # SELF: every group of the sender, resolved by the publisher from the session.
        return _publish(request, form, "groupchat", groups=[SELF] if group == form.ALL else [group])
    return render(request, "chatserver/groupchat.html", {"form": form})
