"""Group names for the websocket door, stored in the session at login so that
opening a websocket never queries the user's groups (as in ws4redis)."""
from .audience import MEMBEROF_SESSION_KEY


def store_groups_in_session(sender, request, user, **kwargs) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[MEMBEROF_SESSION_KEY] = [group.name for group in user.groups.all()]
