"""Receivers of the websocket signals for tests/test_signals.py, installed
with the override ``{"TEST_SIGNAL_RECEIVERS": true}`` (see settings.py), or
``"sender"`` to connect them for the documented sender only.

Each signal is recorded, as JSON, in the Redis list ``signals:<tag>``: the
URL's ``?tag=`` (else the facility), so that a test reads what its own
sockets caused from another process. What a client sends steers the message
receivers: ``slow:S`` sleeps S seconds, ``raise:…`` raises, ``reply:X`` answers
``re:X`` (bytes for a binary message).
"""

import base64
import json
import threading
import time

from django.apps import AppConfig

from twisted_ws4redis.conf import redis_address
from twisted_ws4redis.signals import websocket_connected, websocket_disconnected, websocket_message

_client = None


def _record(signal: str, request, facility: str, **fields) -> None:
    global _client
    if _client is None:
        _client = redis_address().redis_py_client()
    tag = request.GET.get("tag") or facility
    _client.rpush(
        f"signals:{tag}",
        json.dumps(
            {
                "signal": signal,
                "facility": facility,
                "thread": threading.current_thread().name,
                "user": getattr(request.user, "username", None),
                "returned": time.time(),
                **fields,
            }
        ),
    )


def _text(message) -> str:
    return message if isinstance(message, str) else base64.b64encode(message).decode()


def connected(sender, request, facility, channels, **kwargs):
    _record("connected", request, facility, channels=channels)


def disconnected(sender, request, facility, code, **kwargs):
    _record("disconnected", request, facility, code=code)


def raising(sender, message, **kwargs):
    """Connected before ``recording``: Django calls that one all the same."""
    if isinstance(message, str) and message.startswith("raise:"):
        raise RuntimeError("receiver failed on purpose")


def recording(sender, request, facility, message, reply, **kwargs):
    started = time.time()
    if isinstance(message, str) and message.startswith("slow:"):
        time.sleep(float(message.removeprefix("slow:")))
    if isinstance(message, str) and message.startswith("reply:"):
        reply("re:" + message.removeprefix("reply:"))
    elif isinstance(message, bytes) and message.startswith(b"reply:"):
        reply(b"re:" + message.removeprefix(b"reply:"))
    _record("message", request, facility, message=_text(message), binary=isinstance(message, bytes), started=started)


class Recording(AppConfig):
    name = "testproject.receivers"
    label = "signal_receivers"

    def ready(self) -> None:
        from django.conf import settings

        sender = None
        if settings.TEST_SIGNAL_RECEIVERS == "sender":
            # As the signals' documentation names the sender.
            from twisted_ws4redis.server.protocol import WebSocketProtocol as sender
        websocket_connected.connect(connected, sender=sender)
        websocket_disconnected.connect(disconnected, sender=sender)
        websocket_message.connect(raising, sender=sender)
        websocket_message.connect(recording, sender=sender)
