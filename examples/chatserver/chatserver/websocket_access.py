"""Least privilege for the demo's websockets (``WS4REDIS_ALLOWED_CHANNELS``).

The server grants whatever flags a URL asks for; a client is not bound to the
URLs of our pages. So each facility gets the flags its page uses and no more:
only the broadcast chat publishes from the browser; the user and group chats
publish through their views, which stamp the sender (so it cannot be
forged); a facility no page uses is refused.

The broadcast chat speaks ws4redis.v2: its socket's URL names no facility
(``""``, no flags) and each subscribe or publish op is asked here on its own,
with ``request.facility`` set to the op's facility and its one flag
(``["subscribe-broadcast"]``): the same table decides both wires.
"""

from django.core.exceptions import PermissionDenied

#: facility -> the flags its page asks for (see the templates' ws_uri blocks)
PAGES = {
    "": set(),  # a ws4redis.v2 socket's URL: its ops are asked one by one
    "chat": {"subscribe-broadcast", "publish-broadcast", "presence"},
    "userchat": {"subscribe-user"},
    "groupchat": {"subscribe-group"},
}


def allowed_channels(request, channels):
    """Refuse a facility no page uses (HTTP 403); drop the flags its page does not use."""
    allowed = PAGES.get(request.facility)
    if allowed is None:
        raise PermissionDenied("No page of this site uses that facility")
    return [flag for flag in channels if flag in allowed]
