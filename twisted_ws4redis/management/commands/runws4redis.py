"""``manage.py runws4redis``: the twistd ws4redis server with its options, in
the foreground and without autoreload (``runserver`` is the development server)."""

from django.core.management.base import BaseCommand, CommandError

from twisted_ws4redis.server import tap


class Command(BaseCommand):
    help = "Serve this project's websockets and Django on one port with Twisted (as 'twistd ws4redis')."

    def add_arguments(self, parser):
        parser.add_argument("--endpoint", action="append", help=tap.ENDPOINT_HELP)
        for name, default, text in tap.OPTIONS:
            if name != "settings":  # manage.py has its own --settings
                parser.add_argument(
                    f"--{name}", default=default, help=text, type=type(default) if default is not None else str
                )
        for name, text in tap.FLAGS:
            parser.add_argument(f"--{name}", action="store_true", help=text)

    def handle(self, *args, **options):
        from twisted_ws4redis.server.service import run_in_foreground

        try:
            service = tap.build(tap.server_config(options))
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        # A port in use ends the command with one line, before the thread pool
        # or Redis start.
        service.exit_on_listen_error = True
        service.privilegedStartService()
        run_in_foreground(service)
