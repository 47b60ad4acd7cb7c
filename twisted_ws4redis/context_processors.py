"""``WEBSOCKET_URI`` and ``WS4REDIS_HEARTBEAT`` for templates, as in ws4redis."""

import json

from django.http import HttpRequest
from django.utils.safestring import mark_safe

from .conf import get_settings


def default(request: HttpRequest) -> dict:
    settings = get_settings()
    scheme = "wss://" if request.is_secure() else "ws://"
    heartbeat = settings.heartbeat
    return {
        "WEBSOCKET_URI": scheme + request.get_host() + settings.websocket_url,
        # A JavaScript literal; json.dumps escapes quotes, and "</" cannot end a script tag.
        "WS4REDIS_HEARTBEAT": mark_safe(  # noqa: S308 (JSON, escaped as the comment above says)
            json.dumps(heartbeat.decode()).replace("</", "<\\/") if heartbeat else "null"
        ),
    }
