"""``manage.py ws_token USERNAME``: a signed websocket token for a user
(twisted_ws4redis.auth.make_token), for scripts and for trying the token path."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from twisted_ws4redis.auth import make_token


class Command(BaseCommand):
    help = (
        "Print a websocket token for USERNAME, for WS4REDIS_PROCESS_REQUEST = 'twisted_ws4redis.auth.process_request'."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--max-age",
            type=int,
            default=None,
            help="Seconds the token is valid for (default: WS4REDIS_TOKEN_MAX_AGE).",
        )

    def handle(self, *args, username, max_age, **options):
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(f"No user {username!r}") from None
        if not user.is_active:
            raise CommandError(f"{username!r} is not active: a token would be refused")
        try:
            self.stdout.write(make_token(user, max_age))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
