from django.shortcuts import render

from twisted_ws4redis.publisher import RedisPublisher
from twisted_ws4redis.redis_store import RedisMessage


def home(request):
    """A minimal page that opens a broadcast websocket; the welcome message is
    published (and persisted) here, so the socket receives it on connect."""
    RedisPublisher(facility="foobar", broadcast=True).publish_message(RedisMessage("Hello everybody"))
    return render(request, "chatserver/home.html")
