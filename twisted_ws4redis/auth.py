"""Websocket authentication by token, for clients that cannot send the session
cookie (scripts, native apps, pages on another domain).

Each ``process_request_*`` here is a ``WS4REDIS_PROCESS_REQUEST`` hook, run on
the server's thread pool like every hook. They share one path (``_authenticate``):
find the token (the ``Authorization`` header, else the ``token`` query
parameter), turn it into a user, check the user, read their groups from the
database now; only "token -> user" differs between them. A request that
presents no token is authenticated by its session cookie, as without the hook.
Any token that does not lead to an active user refuses the handshake (403),
with one reason for all failures: a client learns nothing of why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare, salted_hmac

from . import django_bridge
from .conf import get_settings
from .receivers import store_groups_in_session

#: Tokens made here are signed for this purpose only: no other signed value of
#: the site (a signed cookie, a password reset link) passes as one.
SALT = "twisted_ws4redis.auth"

#: The query parameter carrying a token (its value never reaches our log: logsafe.uri).
QUERY_PARAMETER = "token"

#: ``Authorization: <scheme> <token>`` schemes read, DRF's and simplejwt's defaults.
HEADER_SCHEMES = ("token", "bearer")

#: The one reason a refused token gets.
REFUSED = "Token authentication failed"

#: "token -> user": the user a token names, or None when it names none that may log in.
TokenUser = Callable[[str], Any]


def _binding(user: Any) -> str:
    """Ties a token to the user's password: ``get_session_auth_hash()`` changes
    with it (as it ends the user's sessions), so the token stops working too.
    A digest of the hash, not the hash itself: a token's payload is readable."""
    auth_hash = user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else ""
    return salted_hmac(SALT, auth_hash, algorithm="sha256").hexdigest()[:24]


def make_token(user: Any, max_age: int | None = None) -> str:
    """A signed token for ``user`` (Django's ``signing``, salted with ``SALT``),
    valid for at least ``max_age`` seconds (``WS4REDIS_TOKEN_MAX_AGE`` by
    default; it expires on a whole second) and until the user's password
    changes. It is checked at the handshake only: a websocket opened with it
    stays open after it expires. It is signed, not encrypted: whoever holds it
    can read the user's primary key and its expiry."""
    if max_age is None:
        max_age = get_settings().token_max_age
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age <= 0:
        raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
    payload = [user._meta.pk.value_to_string(user), math.ceil(time.time() + max_age), _binding(user)]
    return signing.Signer(salt=SALT).sign_object(payload)


def _signed_token_user(token: str) -> Any:
    """The user of a token from ``make_token``: signature, expiry, the user in
    the database, the password binding."""
    try:
        pk, expires, binding = signing.Signer(salt=SALT).unsign_object(token)
    except signing.BadSignature:
        return None
    if expires <= time.time():
        return None
    model = get_user_model()
    try:
        user = model._default_manager.get(pk=model._meta.pk.to_python(pk))
    except (model.DoesNotExist, ValidationError):
        return None
    return user if constant_time_compare(binding, _binding(user)) else None


def presented_token(request: HttpRequest) -> str | None:
    """The token a request presents: ``Authorization: Token <t>`` or ``Bearer
    <t>`` (for clients that can send headers: nothing in the URL), else the
    ``token`` query parameter; None without one. Other schemes are not ours."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in HEADER_SCHEMES and credentials.strip():
        return credentials.strip()
    return request.GET.get(QUERY_PARAMETER)


def _authenticate(request: HttpRequest, token_user: TokenUser) -> None:
    """The shared path of every token hook (see the module's docstring)."""
    token = presented_token(request)
    if token is None:
        django_bridge.process_request(request)
        return
    user = token_user(token)
    if user is None or not getattr(user, "is_active", False):
        raise PermissionDenied(REFUSED)
    # An empty session that is never saved: a token socket has no session
    # channel (nor is it closed at a logout), and the group names read now go
    # where SELF's resolution looks for them.
    request.session = import_module(django_settings.SESSION_ENGINE).SessionStore()
    request.user = user
    store_groups_in_session(None, request, user)


def process_request(request: HttpRequest) -> None:
    """``WS4REDIS_PROCESS_REQUEST = "twisted_ws4redis.auth.process_request"``:
    tokens from ``make_token``, else the session cookie."""
    _authenticate(request, _signed_token_user)


def _drf_token_user(key: str) -> Any:
    try:
        from rest_framework.authentication import TokenAuthentication
        from rest_framework.exceptions import AuthenticationFailed
    except ImportError:
        raise ImproperlyConfigured(
            "process_request_drf_token needs Django REST framework (pip install djangorestframework)"
        ) from None
    if not apps.is_installed("rest_framework.authtoken"):
        raise ImproperlyConfigured("process_request_drf_token needs 'rest_framework.authtoken' in INSTALLED_APPS")
    try:
        user, _ = TokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return None
    return user


def process_request_drf_token(request: HttpRequest) -> None:
    """``"twisted_ws4redis.auth.process_request_drf_token"``: Django REST
    framework's ``Token`` (``rest_framework.authtoken``), else the session cookie."""
    _authenticate(request, _drf_token_user)


def _simplejwt_user(raw: str) -> Any:
    try:
        from rest_framework.exceptions import AuthenticationFailed
        from rest_framework_simplejwt.authentication import JWTAuthentication
    except ImportError:
        raise ImproperlyConfigured(
            "process_request_simplejwt needs djangorestframework-simplejwt (pip install djangorestframework-simplejwt)"
        ) from None
    authentication = JWTAuthentication()
    try:
        # simplejwt's own checks: signature, expiry, token type (AUTH_TOKEN_CLASSES:
        # access tokens by default, so a refresh token is refused), the user.
        return authentication.get_user(authentication.get_validated_token(raw.encode("utf-8")))
    except AuthenticationFailed:  # InvalidToken is one
        return None


def process_request_simplejwt(request: HttpRequest) -> None:
    """``"twisted_ws4redis.auth.process_request_simplejwt"``: access tokens of
    ``djangorestframework-simplejwt``, else the session cookie."""
    _authenticate(request, _simplejwt_user)
