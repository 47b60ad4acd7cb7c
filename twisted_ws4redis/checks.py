"""System checks of the settings: ``manage.py check`` reports every bad value
and every unknown ``WS4REDIS_*`` name, and ``twistd ws4redis`` runs the same
checks before it starts. The validation itself is conf.py's, the one that
``get_settings()`` uses."""
from __future__ import annotations

from typing import Any

from django.core import checks

from . import conf

#: The tag of these checks (``manage.py check --tag twisted_ws4redis``).
TAG = "twisted_ws4redis"


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An Error per bad setting (its id conf.RULES'), a Warning per unknown ``WS4REDIS_*`` name."""
    problems: list[checks.CheckMessage] = [
        checks.Error(error.message, hint=error.hint, id=error.check_id) for error in conf.validate(deep=True)[1]]
    for name, suggestion in conf.unknown_settings():
        problems.append(checks.Warning(
            f"{name} is not a twisted_ws4redis setting: it has no effect",
            hint=f"Did you mean {suggestion}?" if suggestion else "See the settings in twisted_ws4redis' README.",
            id="twisted_ws4redis.W001"))
    return problems
