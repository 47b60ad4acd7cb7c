"""Hooks that refuse to run on the reactor (main) thread: a handshake through
them succeeds only if Django's work really is on the thread pool."""

import threading

from django.core.exceptions import PermissionDenied

from twisted_ws4redis.django_bridge import process_request


def _off_the_reactor(hook: str) -> None:
    if threading.current_thread() is threading.main_thread():
        raise PermissionDenied(f"{hook} ran on the reactor thread")


def process_request_off_reactor(request):
    _off_the_reactor("WS4REDIS_PROCESS_REQUEST")
    process_request(request)
    request.META["TEST_THREAD"] = threading.current_thread().name


def allowed_channels_off_reactor(request, channels):
    _off_the_reactor("WS4REDIS_ALLOWED_CHANNELS")
    if request.META.get("TEST_THREAD") != threading.current_thread().name:
        raise PermissionDenied("the hooks of one handshake ran on different threads")
    return channels
