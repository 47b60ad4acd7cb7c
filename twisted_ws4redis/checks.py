"""System checks: ``manage.py check`` reports every bad setting and every
unknown ``WS4REDIS_*`` name (``twistd ws4redis`` runs the same settings checks
before it starts; the validation itself is conf.py's, the one that
``get_settings()`` uses), whether ``manage.py runserver`` is ours, and what a
migration from ws4redis left behind."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.urls import Resolver404, resolve

from . import conf

#: The tag of these checks (``manage.py check --tag twisted_ws4redis``).
TAG = "twisted_ws4redis"

STATICFILES = "django.contrib.staticfiles"


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An Error per bad setting (its id conf.RULES'), a Warning per unknown ``WS4REDIS_*`` name."""
    problems: list[checks.CheckMessage] = [
        checks.Error(error.message, hint=error.hint, id=error.check_id) for error in conf.validate(deep=True)[1]
    ]
    for name, suggestion in conf.unknown_settings():
        problems.append(
            checks.Warning(
                f"{name} is not a twisted_ws4redis setting: it has no effect",
                hint=f"Did you mean {suggestion}?"
                if suggestion
                else "See the settings in the documentation, docs/settings.rst.",
                id="twisted_ws4redis.W001",
            )
        )
    return problems


def check_runserver_order(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django takes a command from the app listed first: after staticfiles,
    ``runserver`` is staticfiles' own, which serves no websockets."""
    names = [config.name for config in apps.get_app_configs()]
    if STATICFILES in names and names.index(STATICFILES) < names.index("twisted_ws4redis"):
        return [
            checks.Warning(
                f"'{STATICFILES}' precedes 'twisted_ws4redis' in INSTALLED_APPS, so 'manage.py runserver' "
                f"is staticfiles' own and serves no websockets.",
                hint=f"Move 'twisted_ws4redis' above '{STATICFILES}' in INSTALLED_APPS.",
                id="twisted_ws4redis.W010",
            )
        ]
    return []


#: ws4redis' development-server hook, which WSGI_APPLICATION named under ws4redis.
WS4REDIS_RUNSERVER = "ws4redis.django_runserver.application"
WS4REDIS_CONTEXT_PROCESSOR = "ws4redis.context_processors.default"


def check_ws4redis_leftovers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Names of ws4redis that a migration may leave in the settings: nothing
    else reports them before the server starts (WSGI_APPLICATION) or before a
    page renders (the context processor)."""
    problems: list[checks.CheckMessage] = []
    if getattr(settings, "WSGI_APPLICATION", None) == WS4REDIS_RUNSERVER:
        problems.append(
            checks.Warning(
                f"WSGI_APPLICATION is ws4redis' runserver hook {WS4REDIS_RUNSERVER!r}.",
                hint="Point it back to your project's WSGI application (e.g. 'mysite.wsgi.application'): "
                "twistd ws4redis and runserver serve the websockets themselves.",
                id="twisted_ws4redis.W011",
            )
        )
    problems.extend(
        checks.Warning(
            f"TEMPLATES names ws4redis' context processor {WS4REDIS_CONTEXT_PROCESSOR!r}.",
            hint="Replace it with 'twisted_ws4redis.context_processors.default'.",
            id="twisted_ws4redis.W011",
        )
        for engine in getattr(settings, "TEMPLATES", [])
        if WS4REDIS_CONTEXT_PROCESSOR in engine.get("OPTIONS", {}).get("context_processors", [])
    )
    return problems


def check_health_url(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The server answers ``WS4REDIS_HEALTH_URL`` itself, before Django: a view
    of the project at that path would never be reached."""
    health = getattr(settings, "WS4REDIS_HEALTH_URL", None)
    if not isinstance(health, str) or not health.startswith("/") or not getattr(settings, "ROOT_URLCONF", None):
        return []  # off, or a bad value (E034 says so)
    try:
        match = resolve(health)
    except Resolver404:
        return []
    view = match.view_name or f"{match.func.__module__}.{match.func.__qualname__}"
    return [
        checks.Warning(
            f"WS4REDIS_HEALTH_URL {health!r} is also a URL of the project (view {view}): the server answers it, "
            "so that view is never reached.",
            hint="Choose a path that no view uses, such as '/ws4redis/health'.",
            id="twisted_ws4redis.W012",
        )
    ]
