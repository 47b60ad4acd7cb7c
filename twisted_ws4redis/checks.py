"""System checks: ``manage.py check`` reports every bad setting and every
unknown ``WS4REDIS_*`` name (``twistd ws4redis`` runs the same settings checks
before it starts; the validation itself is conf.py's, the one that
``get_settings()`` uses), and whether ``manage.py runserver`` is ours."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks

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
