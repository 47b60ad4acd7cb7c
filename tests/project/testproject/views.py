"""Views the tests call over HTTP, served by the same twistd process."""

import hashlib
import json
import time

from django.contrib.auth import authenticate, login, logout
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from twisted_ws4redis.exceptions import RedisUnavailable
from twisted_ws4redis.publisher import RedisPublisher
from twisted_ws4redis.redis_store import SELF, RedisMessage


def index(request):
    return HttpResponse("testproject", content_type="text/plain")


@csrf_exempt
def login_view(request):
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    login(request, user)
    return JsonResponse({"ok": True, "session_key": request.session.session_key})


def new_session(request):
    """An anonymous visitor's empty session, saved (what ws4redis sites do to
    give anonymous pages a session channel)."""
    request.session.save()
    return JsonResponse({"session_key": request.session.session_key})


@csrf_exempt
def logout_view(request):
    """POST: Django's logout() (LogoutView would want a CSRF token)."""
    logout(request)
    return JsonResponse({"ok": True})


def _audience(value):
    return [SELF if name == "SELF" else name for name in value]


def _publisher(request) -> tuple[RedisPublisher, dict]:
    """The publisher a JSON body {facility, message, broadcast, users, groups,
    sessions, expire} asks for, and that body."""
    spec = json.loads(request.body)
    publisher = RedisPublisher(
        facility=spec["facility"],
        broadcast=spec.get("broadcast", False),
        users=_audience(spec.get("users", [])),
        groups=_audience(spec.get("groups", [])),
        sessions=_audience(spec.get("sessions", [])),
        request=request,
    )
    return publisher, spec


@csrf_exempt
def publish(request):
    """POST JSON (see ``_publisher``): publishes from inside the server process
    (the --redis override applies)."""
    publisher, spec = _publisher(request)
    count = publisher.publish_message(RedisMessage(spec["message"]), spec.get("expire"))
    return JsonResponse({"channels": publisher._publishers, "received": count})


@csrf_exempt
async def apublish(request):
    """``publish`` as an async view, with apublish_message; 503 on RedisUnavailable."""
    publisher, spec = _publisher(request)
    try:
        count = await publisher.apublish_message(RedisMessage(spec["message"]), spec.get("expire"))
    except RedisUnavailable as exc:
        return JsonResponse({"error": type(exc).__name__}, status=503)
    return JsonResponse({"channels": publisher._publishers, "received": count})


def _fetched(message: bytes | None) -> JsonResponse:
    return JsonResponse({"message": message.decode() if message is not None else None})


def fetch(request):
    """GET ?facility=&audience=: the persisted message fetch_message finds."""
    return _fetched(
        RedisPublisher().fetch_message(request, request.GET["facility"], request.GET.get("audience", "any"))
    )


async def afetch(request):
    """``fetch`` as an async view, with afetch_message."""
    return _fetched(
        await RedisPublisher().afetch_message(request, request.GET["facility"], request.GET.get("audience", "any"))
    )


def slow(request):
    """Answers after ?seconds= (to test stopping while a request is answered)."""
    time.sleep(float(request.GET.get("seconds", "1")))
    return HttpResponse("slow and done", content_type="text/plain")


@csrf_exempt
def body_digest(request):
    """The size and SHA-256 of the request body, read as a stream (so that
    Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which guards ``request.body``, does not apply)."""
    digest, size = hashlib.sha256(), 0
    while chunk := request.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"size": size, "sha256": digest.hexdigest()})
