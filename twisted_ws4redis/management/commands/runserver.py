"""``manage.py runserver``: Django's development server (staticfiles' when that
app is installed) serving websockets too, on the same port."""

from django.apps import apps

from twisted_ws4redis.checks import STATICFILES
from twisted_ws4redis.conf import get_settings
from twisted_ws4redis.server.devserver import TwistedDevServer

if apps.is_installed(STATICFILES):
    from django.contrib.staticfiles.management.commands.runserver import Command as DjangoRunserver
else:
    from django.core.management.commands.runserver import Command as DjangoRunserver  # type: ignore[assignment]


class Command(DjangoRunserver):
    help = f"{DjangoRunserver.help.rstrip('.')}, with websockets (twisted_ws4redis) on the same port."
    server_cls = TwistedDevServer  # type: ignore[assignment]  # Django's WSGIServer interface, not its class

    def on_bind(self, server_port):
        super().on_bind(server_port)
        self.stdout.write(f"Websockets under {get_settings().websocket_url} on the same port.")
