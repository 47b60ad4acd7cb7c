"""Views the tests call over HTTP, served by the same twistd process."""
import json
import time

from django.contrib.auth import authenticate, login, logout
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

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


@csrf_exempt
def logout_view(request):
    """POST: Django's logout() (LogoutView would want a CSRF token)."""
    logout(request)
    return JsonResponse({"ok": True})


def _audience(value):
    return [SELF if name == "SELF" else name for name in value]


@csrf_exempt
def publish(request):
    """POST JSON {facility, message, broadcast, users, groups, sessions, expire}:
    publishes from inside the server process (the --redis override applies)."""
    spec = json.loads(request.body)
    publisher = RedisPublisher(
        facility=spec["facility"], broadcast=spec.get("broadcast", False),
        users=_audience(spec.get("users", [])), groups=_audience(spec.get("groups", [])),
        sessions=_audience(spec.get("sessions", [])), request=request)
    count = publisher.publish_message(RedisMessage(spec["message"]), spec.get("expire"))
    return JsonResponse({"channels": publisher._publishers, "received": count})


def slow(request):
    """Answers after ?seconds= (to test stopping while a request is answered)."""
    time.sleep(float(request.GET.get("seconds", "1")))
    return HttpResponse("slow and done", content_type="text/plain")
