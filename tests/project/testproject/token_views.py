"""Views that make tokens and change users in the server's own database, for
tests/test_token_auth.py (a token is bound to a user's row there)."""

import json
from datetime import timedelta

from django.contrib.auth.models import Group, User
from django.core import signing
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from twisted_ws4redis import auth


def _jwt(user, kind):
    from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

    if kind == "jwt-refresh":
        return RefreshToken.for_user(user)
    token = AccessToken.for_user(user)
    if kind == "jwt-expired":
        token.set_exp(lifetime=timedelta(seconds=-60))
    return token


@csrf_exempt
def make(request):
    """POST {username, kind, max_age}: a token of that kind for the user. Kinds:
    signed (auth.make_token), wrong-salt (the same payload signed for another
    purpose), drf, jwt-access, jwt-refresh, jwt-expired."""
    spec = json.loads(request.body)
    user = User.objects.get(username=spec["username"])
    kind = spec.get("kind", "signed")
    if kind == "signed":
        token = auth.make_token(user, spec.get("max_age"))
    elif kind == "wrong-salt":
        payload = signing.Signer(salt=auth.SALT).unsign_object(auth.make_token(user))
        token = signing.Signer(salt="another.purpose").sign_object(payload)
    elif kind == "drf":
        from rest_framework.authtoken.models import Token

        token = Token.objects.get_or_create(user=user)[0].key
    else:
        token = str(_jwt(user, kind))
    return JsonResponse({"token": token})


@csrf_exempt
def user(request):
    """POST {username, create, delete, is_active, password, groups}: each key
    given changes the user so."""
    spec = json.loads(request.body)
    if spec.get("create"):
        User.objects.create_user(spec["username"], password="secret")
    account = User.objects.get(username=spec["username"])
    if spec.get("delete"):
        account.delete()
        return JsonResponse({"ok": True})
    if "is_active" in spec:
        account.is_active = spec["is_active"]
    if "password" in spec:
        account.set_password(spec["password"])
    account.save()
    if "groups" in spec:
        account.groups.set([Group.objects.get_or_create(name=name)[0] for name in spec["groups"]])
    return JsonResponse({"ok": True})
