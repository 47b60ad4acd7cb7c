"""ws4redis' exception names, for code that imports them."""
import socket

from django.core.exceptions import BadHeaderError


class WebSocketError(socket.error):
    pass


class FrameTooLargeException(WebSocketError):
    pass


class HandshakeError(BadHeaderError):
    pass


class UpgradeRequiredError(HandshakeError):
    pass
