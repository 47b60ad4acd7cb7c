"""``manage.py runserver`` with websockets: Django's own command (address
parsing, system checks, migrations warning, banner, autoreloader) runs our
Twisted service in place of its WSGI server, through the ``server_cls`` hook
it builds its server from."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable

from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import CannotListenError

from .service import ServerConfig, make_service, run_in_foreground


def endpoint_for(addr: str, port: int, ipv6: bool) -> str:
    """The Twisted endpoint of what Django's runserver would bind."""
    return f"{'tcp6' if ipv6 else 'tcp'}:{port}:interface={quoteStringArgument(addr)}"


class TwistedDevServer:
    """Django's runserver does ``server_cls((addr, port), handler_class,
    ipv6=...)``, reports the port, ``set_app(handler)`` and ``serve_forever()``:
    the same steps with the Twisted service. The port is bound in the
    constructor, so Django's own messages report a port in use."""

    application: Callable | None = None

    def __init__(self, server_address: tuple[str, int], handler_class, ipv6: bool = False):
        addr, port = server_address
        # Django subclasses this with ThreadingMixIn unless --nothreading.
        threads = ServerConfig.threads if isinstance(self, socketserver.ThreadingMixIn) else 1
        self.service = make_service(
            ServerConfig(
                endpoints=[endpoint_for(addr, port, ipv6)], application=self._call_application, threads=threads
            )
        )
        try:
            self.service.privilegedStartService()
        except CannotListenError as exc:
            raise exc.socketError from None

    def _call_application(self, environ, start_response):
        # The service is built before Django hands over its handler.
        return self.application(environ, start_response)  # type: ignore[misc]  # set by set_app() first

    def set_app(self, application: Callable) -> None:
        self.application = application

    def serve_forever(self) -> None:
        # The autoreloader runs the server in a thread of its child process,
        # where signal handlers cannot be installed (its main thread watches files).
        run_in_foreground(self.service, signal_handlers=threading.current_thread() is threading.main_thread())
