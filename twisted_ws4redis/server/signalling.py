"""Sending the signals of ``twisted_ws4redis.signals`` for one websocket.

Each is sent with ``send_robust`` on the thread pool, never on the reactor,
and each socket's signals go through one Deferred chain: a signal is sent
once the one before has returned, so receivers see connected, the messages,
then disconnected. ``listening()`` is asked on the reactor first: while
nobody listens a socket costs no thread hop and no state.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from django.dispatch import Signal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import logsafe
from ..django_bridge import defer_to_django
from ..signals import websocket_connected, websocket_disconnected, websocket_message

if TYPE_CHECKING:
    from .protocol import WebSocketProtocol

log = Logger()

#: What a message's ``reply`` does on the reactor: send (payload, is_binary).
Deliver = Callable[[bytes, bool], None]


class SocketSignals:
    """The signals of one websocket, made when its first one is sent."""

    __slots__ = ("_tail", "holding", "protocol")

    def __init__(self, protocol: WebSocketProtocol):
        self.protocol = protocol
        #: the last signal sent or waiting; the next one starts when it fired
        self._tail: defer.Deferred = defer.succeed(None)
        #: a message signal is on its way: nothing more is read from the socket
        self.holding = False

    def send(self, signal: Signal, **kwargs) -> defer.Deferred:
        """``signal`` sent after those before it; fires (None) once its receivers returned."""
        from .protocol import WebSocketProtocol  # the sender; that module imports this one

        protocol = self.protocol
        factory = protocol.factory
        job = partial(signal.send_robust, WebSocketProtocol, request=protocol.django_request, **kwargs)
        done: defer.Deferred[None] = defer.Deferred()

        def failed(failure: Failure) -> None:
            # send_robust catches what receivers raise: this is Django's own hygiene failing.
            log.failure(
                "A websocket signal of {path} was not sent", failure, path=logsafe.uri(protocol.http_request_uri)
            )

        def run(_) -> defer.Deferred:
            return defer_to_django(factory.reactor, factory.pool, job).addErrback(failed).addBoth(done.callback)

        self._tail.addCallback(run)
        return done


def listening(signal: Signal) -> bool:
    """Whether ``signal`` has receivers for this server's sockets: those
    connected for any sender and those connected with ``sender=WebSocketProtocol``
    (Django's ``has_listeners()`` without a sender counts only the former)."""
    from .protocol import WebSocketProtocol  # the sender; that module imports this one

    return signal.has_listeners(WebSocketProtocol)


def heard_later() -> bool:
    """Whether a receiver of a websocket's later signals (its messages, its
    end) is connected. A plain websocket that opens while none is lets go of
    its Django request (~1.5 KiB per socket): a receiver connected after it
    opened gets ``request=None`` for it."""
    return listening(websocket_message) or listening(websocket_disconnected)


def _signals(protocol: WebSocketProtocol) -> SocketSignals:
    if protocol.signals is None:
        protocol.signals = SocketSignals(protocol)
    return protocol.signals


def connected(protocol: WebSocketProtocol) -> None:
    """From onOpen: the channels the URL subscribed to."""
    if not listening(websocket_connected):
        return
    if protocol._wants_v2:
        channels = [
            channel
            for flag, names in protocol._flags.items()  # type: ignore[union-attr]  # set by the handshake
            if flag.startswith("subscribe-")
            for channel in names
        ]
    else:
        channels = list(protocol.subscriber.subscribed)
    _signals(protocol).send(websocket_connected, facility=protocol.facility, channels=channels)


def disconnected(protocol: WebSocketProtocol, code: int | None) -> None:
    """From onClose, for a socket that was open."""
    if listening(websocket_disconnected):
        _signals(protocol).send(websocket_disconnected, facility=protocol.facility, code=code)


def message(protocol: WebSocketProtocol, facility: str, data: str | bytes, deliver: Deliver) -> defer.Deferred:
    """The message signal (WS4REDIS_MESSAGE_SIGNAL is on); fires once its
    receivers returned, at once when there are none. Meanwhile nothing more is
    read from the socket: a client makes the server hold one message at most."""
    if not listening(websocket_message):
        return defer.succeed(None)
    signals = _signals(protocol)
    signals.holding = True
    protocol.update_reading()
    reactor = protocol.factory.reactor

    def reply(data: str | bytes) -> None:
        """Send ``data`` to this socket alone (str: text, bytes: binary); any thread."""
        if isinstance(data, str):
            reactor.callFromThread(deliver, data.encode("utf-8"), False)
        elif isinstance(data, bytes):
            reactor.callFromThread(deliver, data, True)
        else:
            raise TypeError(f"reply() takes str or bytes, not {type(data).__name__}")

    def release(_) -> None:
        signals.holding = False
        # Not from inside the frame parser, should the signal have been sent at once.
        reactor.callLater(0, protocol.read_on)

    return signals.send(websocket_message, facility=facility, message=data, reply=reply).addBoth(release)


def plain_message(protocol: WebSocketProtocol, payload: bytes, is_binary: bool) -> None:
    """What the client of a plain ws4redis socket sent; replies are frames as sent."""
    if not listening(websocket_message):
        return

    def deliver(payload: bytes, is_binary: bool) -> None:
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendMessage(payload, is_binary)
            protocol._last_sent = protocol.factory.reactor.seconds()

    message(protocol, protocol.facility, payload if is_binary else payload.decode("utf-8"), deliver)
