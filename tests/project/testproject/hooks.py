"""Hooks the tests plug in through WS4REDIS_ALLOWED_CHANNELS / _PROCESS_REQUEST."""

import time

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.core.exceptions import PermissionDenied

from twisted_ws4redis.subscriber import RedisSubscriber


def allowed_channels(request, channels):
    """Refuse with header Deny-Channels: YES (as ws4redis' example hook); drop
    every publish flag with header Read-Only: YES."""
    if request.META.get("HTTP_DENY_CHANNELS") == "YES":
        raise PermissionDenied("Channels denied by the test hook")
    if request.META.get("HTTP_READ_ONLY") == "YES":
        return [flag for flag in channels if not flag.startswith("publish-")]
    return channels


def token_process_request(request):
    """Authentication without a session cookie: ?token=<username>."""
    request.session = SessionStore()
    username = request.GET.get("token")
    user = get_user_model().objects.filter(username=username).first() if username else None
    request.user = user or AnonymousUser()


def failing_process_request(request):
    raise RuntimeError("the session backend is broken (test)")


class BroadcastOnlySubscriber(RedisSubscriber):
    """A WS4REDIS_SUBSCRIBER that recognises only the broadcast flags."""

    subscription_channels = ("subscribe-broadcast",)
    publish_channels = ("publish-broadcast",)


def breakable_allowed_channels(request, channels):
    """allowed_channels, that raises (a bug in a hook) with header Break-Hook: YES."""
    if request.META.get("HTTP_BREAK_HOOK") == "YES":
        raise RuntimeError("the hook is broken (test)")
    return allowed_channels(request, channels)


def facility_allowed_channels(request, channels):
    """allowed_channels, and by ``request.facility`` (what a ws4redis.v2
    subscribe or publish sets): 'denied-…' raises PermissionDenied,
    'nouser-…' drops subscribe-user, 'nopresence-…' drops presence."""
    facility = getattr(request, "facility", None) or ""
    if facility.startswith("denied-"):
        raise PermissionDenied("Facility denied by the test hook")
    if facility.startswith("nouser-"):
        channels = [flag for flag in channels if flag != "subscribe-user"]
    if facility.startswith("nopresence-"):
        channels = [flag for flag in channels if flag != "presence"]
    return allowed_channels(request, channels)


def probing_allowed_channels(request, channels):
    """allowed_channels, for tests of what a ws4redis.v2 socket keeps: it
    counts its calls on the handshake's request (one per websocket) and
    refuses the facility 'hook-calls' with that count; it takes 0.3 s for a
    facility starting with 'slow-'."""
    calls = request.META["TEST_HOOK_CALLS"] = request.META.get("TEST_HOOK_CALLS", 0) + 1
    facility = getattr(request, "facility", "")
    if facility == "hook-calls":
        raise PermissionDenied(f"{calls} calls")
    if facility.startswith("slow-"):
        time.sleep(0.3)
    return allowed_channels(request, channels)
