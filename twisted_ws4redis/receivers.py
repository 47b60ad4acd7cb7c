"""Receivers of django.contrib.auth's signals (connected in apps.py).

Group names for the websocket door are stored in the session at login, so that
opening a websocket never queries the user's groups (as in ws4redis). At
logout the session's websockets are closed on every node."""

import logging

import redis

from .audience import MEMBEROF_SESSION_KEY, session_digest
from .publisher import close_session_websockets
from .server.logbridge import extra

logger = logging.getLogger(__name__)


def store_groups_in_session(sender, request, user, **kwargs) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[MEMBEROF_SESSION_KEY] = [group.name for group in user.groups.all()]


def close_websockets_at_logout(sender, request, user, **kwargs) -> None:
    """logout() sends the signal, then flushes the session: its key is still known here."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if not key:
        return
    try:
        close_session_websockets(key)
    except redis.exceptions.RedisError as exc:  # RedisUnavailable, or e.g. an ACL refusing PUBLISH
        # The logout itself must succeed; the websockets stay open until they close.
        digest = session_digest(key)
        logger.warning(
            "Logout: the websockets of session %s were not closed: %s",
            digest,
            exc,
            extra=extra({"session": digest, "error": str(exc)}),
        )
