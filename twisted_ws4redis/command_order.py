"""The system check that ``manage.py runserver`` is ours: Django takes a
command from the app listed first in INSTALLED_APPS. Kept apart from the
server (no Twisted import at every Django start)."""
from __future__ import annotations

from django.apps import apps
from django.core import checks

STATICFILES = "django.contrib.staticfiles"


def check_runserver_order(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Django takes a command from the app listed first: after staticfiles,
    ``runserver`` is staticfiles' own, which serves no websockets."""
    names = [config.name for config in apps.get_app_configs()]
    if STATICFILES in names and names.index(STATICFILES) < names.index("twisted_ws4redis"):
        return [checks.Warning(
            f"'{STATICFILES}' precedes 'twisted_ws4redis' in INSTALLED_APPS, so 'manage.py runserver' "
            f"is staticfiles' own and serves no websockets.",
            hint=f"Move 'twisted_ws4redis' above '{STATICFILES}' in INSTALLED_APPS.",
            id="twisted_ws4redis.W010")]
    return []
