"""The websocket door: an Autobahn server protocol that asks Django (on a
thread) who the client is, then relays between the socket and Redis."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from pprint import pformat
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import txaio
from autobahn import util as autobahn_util
from autobahn.twisted import websocket as autobahn_websocket
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny
from django.core.exceptions import PermissionDenied
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import __version__, audience, logsafe
from ..conf import Settings
from ..django_bridge import Accepted, Handshake, authorize, defer_to_django, reads_nothing
from . import signalling
from .descriptors import ConnectionBudget
from .metrics import Stats, refusal_reason
from .outbox import Outbox, buffered_bytes, socket_transport, write_now
from .presence import NodePresence
from .pubsub import REDIS_WAIT, Burst, PubSubMessage, RedisBus
from .v2 import SUBPROTOCOL, V2Session

if TYPE_CHECKING:
    from ..subscriber import RedisSubscriber
    from .cluster import ClusterBus

log = Logger()


def _only_when_debugging(format_function: Callable[[object], str]) -> Callable[[object], str]:
    """One of Autobahn's formatters for the arguments of its debug lines,
    which it calls whether or not debug logging is on: skipped unless it is."""

    def formatted(value) -> str:
        if txaio.get_global_log_level() in ("debug", "trace"):  # type: ignore[attr-defined]  # txaio's, untyped
            return format_function(value)
        return "(not formatted: debug logging is off)"

    return formatted


# Autobahn pretty-prints its ~40 options for a debug log line on every new
# connection, whether or not debug logging is on: 40 % of the reactor's time
# while accepting handshakes (bench/README.md). Its debug lines also name the
# method they are in with hltype(), ~7 calls per handshake: 3 % more.
autobahn_protocol.pformat = _only_when_debugging(pformat)  # type: ignore[assignment]  # called with one argument
autobahn_protocol.hltype = autobahn_websocket.hltype = _only_when_debugging(autobahn_util.hltype)

#: Autobahn's state of the opening handshake (the request as read, its
#: headers, the response), which nothing reads once the websocket is open
#: (tests/test_write_path.py pins that): let go of then.
HANDSHAKE_ONLY = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_headers",
    "http_request_params",
    "http_request_host",
    "http_request_path",
    "_wskey",
    "websocket_extensions",
    "websocket_origin",
    "websocket_protocols",
)

#: Seconds without any frame to the client after which a heartbeat is sent.
HEARTBEAT_IDLE = 4.0
#: Random bytes in each of the server's pings, which only its answer repeats.
PING_PAYLOAD_SIZE = 8
#: Close code of websockets whose session ended (logout): 4000 + HTTP 401, as
#: graphql-ws does; not 1008, which says the client broke a rule.
SESSION_ENDED_CODE = 4401
SESSION_ENDED_REASON = "Session ended"
#: Seconds a node refuses handshakes authenticated with a session it was told
#: has ended: one read from the session just before logout flushed it, or
#: still in flight on a thread when the command came, must not get through.
SESSION_ENDED_MEMORY = 10.0


def _address(address) -> tuple[str, int]:
    """(host, port) of a transport address; a UNIX socket peer is local."""
    return getattr(address, "host", "127.0.0.1"), getattr(address, "port", 0)


class TokenBucket:
    """A rate with bursts of up to one second's worth."""

    __slots__ = ("_checked", "_tokens", "rate")

    def __init__(self, rate: float, now: float):
        self.rate = rate
        self._tokens = rate
        self._checked = now

    def take(self, now: float) -> bool:
        """One more at ``now``: False when that is over the rate."""
        tokens = min(self.rate, self._tokens + (now - self._checked) * self.rate)
        self._checked = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


#: The formats of what Autobahn logs about a handshake it fails, besides our
#: WSREJECT: an info line, then the warning of the dropped connection
#: (tests/test_logging.py pins them).
AUTOBAHN_REFUSAL_FORMATS = frozenset(
    {
        "failing WebSocket opening handshake ('{reason}')",
        "dropping connection to peer {peer} with abort={abort}: {reason}",
    }
)


class WithoutRefusalLines:
    """Autobahn's logger for one connection being refused, minus its lines
    about the refusal; any other line (an error, a warning) passes."""

    def __init__(self, autobahn_log):
        self._log = autobahn_log

    def __getattr__(self, name: str):
        return getattr(self._log, name)

    def info(self, format=None, *args, **kwargs) -> None:
        if format not in AUTOBAHN_REFUSAL_FORMATS:
            self._log.info(format, *args, **kwargs)

    def warn(self, format=None, *args, **kwargs) -> None:
        if format not in AUTOBAHN_REFUSAL_FORMATS:
            self._log.warn(format, *args, **kwargs)


class WebSocketProtocol(WebSocketServerProtocol):
    factory: WebSocketFactory

    subscriber: RedisSubscriber = None  # type: ignore[assignment]  # set by onConnect, before any use
    django_request = None
    echo = False
    #: audience.session_digest of the session this websocket authenticated with
    session_digest: str | None = None
    _heartbeat_call = None
    #: reactor time of the ping still waiting for its pong (see ``ping_all``)
    _ping_sent: float | None = None
    #: what that ping carried
    _ping_payload: bytes | None = None
    #: WS4REDIS_MAX_PUBLISH_RATE and WS4REDIS_MAX_FRAME_RATE, when set (from onOpen)
    _publish_bucket: TokenBucket | None = None
    _frame_bucket: TokenBucket | None = None
    #: frames of the message being received
    _fragments = 0
    #: the close frame is being written (it may go past the buffer cap)
    _sending_close = False
    #: nothing more is read from this client (closed for a policy violation)
    _deaf = False
    #: the transport's write buffer is full: nothing is read until it drains
    _write_blocked = False
    #: the ws4redis.v2 state, when the client asked for that protocol
    v2: V2Session | None = None
    #: the client offered ws4redis.v2 (from onConnect)
    _wants_v2 = False
    #: ws4redis.v2: the URL's allowed flags and their channels
    _flags: dict | None = None
    #: the user's name for presence (None: anonymous)
    username: str | None = None
    #: a plain websocket counted as connected to its facility (presence)
    _counted = False
    #: its signals (signals.py), once one was sent
    signals: signalling.SocketSignals | None = None
    #: reactor time of the last frame to the client; until the websocket
    #: opens, of the door's takeover (the handshake latency's start: one
    #: attribute for both, none more per socket)
    _last_sent = 0.0
    #: why the handshake is being refused (metrics.REFUSALS), when its raiser knows
    _refusal: str | None = None
    #: the refusal was counted already (a timeout, then a late answer of Django)
    _refusal_counted = False

    # -- the write path and back-pressure --------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: read nothing more from this
        client (no more frames to answer) until the buffer drains."""
        self._write_blocked = True
        self.update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self.update_reading()

    def update_reading(self) -> None:
        """Read from the socket unless something says not to: a policy close,
        a full write buffer, a handshake Django still decides, a ws4redis.v2
        op waiting."""
        transport = socket_transport(self.transport)
        if transport is None:
            return
        if self._deaf or self._write_blocked or self._paused_before_101 or self._op_waiting:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    @property
    def _op_waiting(self) -> bool:
        """A ws4redis.v2 op waits (Django, Redis), or a message signal is on its
        way: what the client sends next waits too."""
        return (self.v2 is not None and self.v2.busy) or (self.signals is not None and self.signals.holding)

    def read_on(self) -> None:
        """A ws4redis.v2 op is done: parse what the client sent meanwhile."""
        self.update_reading()
        if self.state == self.STATE_OPEN:
            self.consumeData()

    def stopProducing(self) -> None:
        """The connection is lost; Autobahn's connectionLost cleans up."""

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """The one write path: every byte to the websocket comes here (the
        handshake response, Autobahn's frames, pongs and close frames, our
        messages, heartbeats, replays and the outbox's broadcasts). Past
        WS4REDIS_MAX_BUFFERED_BYTES waiting for the client, the write is
        refused and the websocket closed. (``sync`` and ``chopsize``,
        Autobahn's trickled writes, are never asked for by this server.)"""
        waiting = buffered_bytes(self.transport)
        if waiting and waiting + len(data) > self.factory.settings.max_buffered_bytes and not self._sending_close:
            self.overflowed(waiting)
        else:
            write_now(self.transport, data)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        """Autobahn's, with the close frame let past the buffer cap: it is the
        last frame (at most 127 bytes), and tells a client that reads again why."""
        self._sending_close = True
        try:
            super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        finally:
            self._sending_close = False

    # -- the connection, from its takeover by the websocket door ------------------

    def connectionMade(self):
        # Counted from here, so handshakes in progress count too (descriptors.py).
        self.factory.budget.websocket_opened()
        self._last_sent = self.factory.reactor.seconds()
        super().connectionMade()
        # twisted.web's HTTPChannel, which handed this transport over, is still
        # its producer, and ignores pauses while a request (this upgrade) is
        # open. Be the producer instead, to stop reading while writes back up:
        # the socket's producer, under any TLS layer. TLS pauses its producer
        # while OpenSSL waits to read (a write that met WantReadError); a pause
        # that stopped reading then would wait for ever.
        self.transport.unregisterProducer()  # type: ignore[union-attr]  # connected: a TCP or TLS transport
        socket_transport(self.transport).registerProducer(self, True)  # type: ignore[union-attr, arg-type]  # a push producer

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # The descriptor is free whatever Autobahn raised: a count never
            # given back would narrow the caps for good.
            self.factory.budget.websocket_closed()

    # -- opening handshake --------------------------------------------------------

    #: the handshake's head went to Django: what comes before the 101 is not another one
    _head_taken = False
    #: reading paused because the client sent more while Django decides
    _paused_before_101 = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # A client waits for the 101 (RFC 6455 4.1). One that sends more while
        # Django decides is not read further until then, so what it sends early
        # costs one read at most. Paused only then: pausing every handshake
        # cost two more epoll calls each.
        if self._head_taken and self.data and self.state == self.STATE_CONNECTING and not self._paused_before_101:
            self._paused_before_101 = True
            self.update_reading()

    def processHandshake(self):
        # Autobahn parses what follows the head, while Django still decides, as a
        # new handshake: a second onConnect, a second 101, a subscriber never
        # released, and a connectionLost that raised before the budget was told.
        # It stays in the buffer, for the frames parser once the socket is open.
        if not self._head_taken:
            super().processHandshake()

    def onConnect(self, request):
        uri = urlsplit(self.http_request_uri)
        settings = self.factory.settings
        try:
            facility = audience.facility_from_path(uri.path, settings.websocket_url)
        except (ValueError, UnicodeDecodeError):
            self._refusal = "facility"
            raise ConnectionDeny(400, "The facility is not valid UTF-8 under WEBSOCKET_URL") from None
        if not settings.facility_pattern.fullmatch(facility):
            self._refusal = "facility"
            raise ConnectionDeny(400, "The facility is not allowed (see WS4REDIS_FACILITY_PATTERN)")
        host = settings.origins.request_host(self.http_headers)
        if not settings.origins.valid_host(host):
            self._refusal = "host"
            raise ConnectionDeny(400, "The Host is not one of ALLOWED_HOSTS")
        if not settings.origins.allows(self.http_headers.get("origin"), host):
            self._refusal = "origin"
            raise ConnectionDeny(403, "This origin may not open websockets here (see WS4REDIS_ALLOWED_ORIGINS)")
        host, port = _address(self.transport.getPeer())  # type: ignore[union-attr]  # connected
        handshake = Handshake(
            path=uri.path,
            query=uri.query,
            headers=dict(self.http_headers),
            remote_addr=host,
            remote_port=port,
            server_port=_address(self.transport.getHost())[1],  # type: ignore[union-attr]
            secure=ISSLTransport.providedBy(self.transport),
        )
        self.facility = facility
        self._head_taken = True
        self._wants_v2 = SUBPROTOCOL in request.protocols
        arguments = (handshake, facility, settings, self.factory.bus, self._wants_v2)
        if reads_nothing(handshake, settings):
            d = defer.maybeDeferred(authorize, *arguments)
        else:
            d = defer_to_django(self.factory.reactor, self.factory.pool, authorize, *arguments)
        return d.addCallbacks(self._accepted, self._refused)

    def _accepted(self, accepted: Accepted):
        if self.state != self.STATE_CONNECTING:
            # Dropped while Django decided (the opening handshake's deadline, or
            # the client gone): Autobahn would still open it, and the socket
            # would stay among the open ones, subscribed, for ever. (A client that
            # leaves meanwhile is not seen: its socket is not read until then.)
            self._refusal = "timeout"
            raise ConnectionDeny(408, "The opening handshake timed out")
        if self.factory.session_ended(accepted.session_digest):
            self._refusal = "session_ended"
            raise ConnectionDeny(403, "This session has ended")
        self.session_digest = accepted.session_digest
        self.django_request = accepted.request
        self.subscriber = accepted.subscriber
        self.echo = accepted.echo
        self.username = accepted.username
        if self._paused_before_101:
            self._paused_before_101 = False
            self.update_reading()
        if self._wants_v2:
            self._flags = accepted.flags
            return SUBPROTOCOL
        # ws4redis echoed the whole offer, which clients reject; pick the first.
        return self.websocket_protocols[0] if self.websocket_protocols else None

    def _refused(self, failure):
        if failure.check(ConnectionDeny):
            return failure
        if failure.check(PermissionDenied):
            self._refusal = "forbidden"
            raise ConnectionDeny(403, str(failure.value) or "Forbidden")
        log.failure("Websocket handshake for {path} failed", failure, path=logsafe.uri(self.http_request_uri))
        self._refusal = "error"
        raise ConnectionDeny(500, "Internal Server Error")

    def failHandshake(self, reason, code=400, responseHeaders=None):
        """Autobahn's refusals quote what the client sent (its Host header, its
        request line…): escaped, for the response and our WSREJECT line, the
        one line a refusal logs (Autobahn's own two are dropped)."""
        self.log = WithoutRefusalLines(type(self).log)
        super().failHandshake(logsafe.text(reason), code, responseHeaders)

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        """A complete HTTP response: the reason goes into the body, never into the
        status line (where a client-supplied string would break the response)."""
        self._count_refusal(refusal_reason(self._refusal, code))
        body = f"{reason}\n".encode("utf-8", "replace")
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {code} {phrase}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if code == 426:
            lines += ["Upgrade: websocket", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in responseHeaders or ()]
        log.info(
            "WSREJECT {path} {peer} {code} {reason}",
            path=logsafe.uri(getattr(self, "http_request_uri", "?")),
            peer=logsafe.text(self.peer),
            code=code,
            reason=logsafe.text(reason),
        )
        self.sendData(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == self.STATE_CONNECTING:
            self._count_refusal("timeout")
        super().onOpenHandshakeTimeout()

    def _count_refusal(self, reason: str) -> None:
        if not self._refusal_counted:
            self._refusal_counted = True
            self.factory.stats.handshake_refused(reason)

    # -- open ------------------------------------------------------------------------

    def onOpen(self):
        self._forget_the_handshake()
        self._ready = False
        self._backlog: list[PubSubMessage] = []
        self._last_published: bytes | None = None
        now = self.factory.reactor.seconds()
        taken_over, self._last_sent = self._last_sent, now
        settings = self.factory.settings
        if settings.max_publish_rate is not None:
            self._publish_bucket = TokenBucket(settings.max_publish_rate, now)
        if settings.max_frame_rate is not None:
            self._frame_bucket = TokenBucket(settings.max_frame_rate, now)
        self.factory.connections.add(self)
        self.factory.stats.websocket_opened(self.facility, now - taken_over)
        if self.session_digest is not None:
            self.factory.sessions.setdefault(self.session_digest, set()).add(self)
        log.info(
            "WSCONNECT {path} {peer} subscribe={subscribed} publish={publishers}",
            path=logsafe.uri(self.http_request_uri),
            peer=logsafe.text(self.peer),
            subscribed=logsafe.channels(self.subscriber.subscribed, self.factory.settings.prefix),
            publishers=logsafe.channels(self.subscriber.publishers, self.factory.settings.prefix),
        )
        heartbeat = self.factory.settings.heartbeat
        if heartbeat is not None:
            self.sendMessage(heartbeat)
            self._heartbeat_call = self.factory.reactor.callLater(HEARTBEAT_IDLE, self._heartbeat_due)
        signalling.connected(self)
        if self._wants_v2:
            self.v2 = V2Session(self)
            self.v2.open(self.facility, self._flags)  # type: ignore[arg-type]  # set by onConnect for v2
            self._flags = None
            return
        if not signalling.heard_later():
            self.django_request = None  # nothing reads it again (a ws4redis.v2 socket's ops do)
        if self.factory.presence is not None:
            self._counted = True
            self.factory.presence.joined(self.facility, self.username)
        d = self.subscriber.subscribe(self._deliver)
        d.addCallback(lambda _: self.subscriber.fetch_persisted_messages())
        d.addTimeout(REDIS_WAIT, self.factory.reactor)
        d.addCallbacks(self._send_persisted, self._redis_unavailable)
        d.addBoth(self._go_live)

    def _forget_the_handshake(self) -> None:
        for name in HANDSHAKE_ONLY:
            setattr(self, name, None)
        # Autobahn's queue for the trickled writes of its own sendData
        # (sync/chopsize), which this one never makes: an empty deque is 760
        # bytes per socket.
        self.send_queue = ()  # type: ignore[assignment]  # (never appended to: see above)

    def _send_persisted(self, messages: list[bytes]) -> None:
        bus = self.factory.bus
        bus.delivered += len(messages)
        bus.delivered_bytes += sum(len(payload) for payload in messages)
        for payload in messages:
            self._send_message(PubSubMessage(b"", payload, live=False))

    def _redis_unavailable(self, failure) -> None:
        log.warn(
            "Websocket {path}: no persisted messages, Redis did not answer: {error}",
            path=logsafe.uri(self.http_request_uri),
            error=failure.getErrorMessage(),
        )

    def _go_live(self, _) -> None:
        """Messages that arrived while the persisted ones were fetched go out now,
        after them, in order."""
        self._ready = True
        backlog, self._backlog = self._backlog, []
        self._deliver(Burst(b"", backlog))

    def _deliver(self, messages: Burst) -> None:
        if not self._ready:
            self._backlog.extend(messages)
            return
        last = self._last_published
        if not (self.echo or last is None) and any(message.payload == last for message in messages):
            messages = Burst(messages.channel, [message for message in messages if message.payload != last])
        self.put_burst(messages, "ws4redis", self._frame)

    def _frame(self, message: PubSubMessage) -> bytes:
        return message.prepared(self.factory).payloadHybi

    def put_burst(self, messages: Burst, key, frame: Callable[[PubSubMessage], bytes]) -> None:
        """``messages`` as ``frame(message)`` makes them, joined once per
        ``key`` for every socket (no permessage-deflate is negotiated, so a
        frame is valid on every connection), and written at the end of this
        reactor turn together with the socket's other frames of that turn."""
        if not messages or self.state != self.STATE_OPEN:
            return
        outbox = self.factory.outbox
        for data in messages.writes(key, frame, outbox.max_write):
            outbox.put(self, data)
        self._last_sent = self.factory.reactor.seconds()

    def _send_message(self, message: PubSubMessage) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendPreparedMessage(message.prepared(self.factory))
        self._last_sent = self.factory.reactor.seconds()

    def _send_heartbeat(self) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(self.factory.settings.heartbeat)
        self._last_sent = self.factory.reactor.seconds()

    def _heartbeat_due(self) -> None:
        idle = self.factory.reactor.seconds() - self._last_sent
        if idle >= HEARTBEAT_IDLE:
            self._send_heartbeat()
            idle = 0.0
        self._heartbeat_call = self.factory.reactor.callLater(HEARTBEAT_IDLE - idle, self._heartbeat_due)

    # -- from the client -----------------------------------------------------------

    def processData(self) -> bool:
        return not self._deaf and not self._op_waiting and super().processData()

    def onFrameBegin(self) -> None:
        """Count every frame (control frames too: a ping flood is a frame
        flood) against WS4REDIS_MAX_FRAME_RATE, and the frames of a message
        against WS4REDIS_MAX_FRAGMENTS, before Autobahn does anything with it."""
        opcode = self.current_frame.opcode
        if opcode < 8:
            self._fragments = self._fragments + 1 if opcode == 0 else 1
        max_fragments = self.factory.settings.max_fragments
        if self._frame_bucket is not None and not self._frame_bucket.take(self.factory.reactor.seconds()):
            self._close_for_policy("Too many frames (WS4REDIS_MAX_FRAME_RATE)")
        elif max_fragments is not None and self._fragments > max_fragments:
            self._close_for_policy(f"More than {max_fragments} frames in one message (WS4REDIS_MAX_FRAGMENTS)")
        else:
            super().onFrameBegin()

    def onPong(self, payload: bytes) -> None:
        """Only the answer to the server's ping (its random payload) shows that
        the peer reads; an unsolicited pong (RFC 6455 allows them) does not."""
        if payload == self._ping_payload:
            self._ping_sent = self._ping_payload = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # after our close frame, nothing is answered or published
        stats = self.factory.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)
        if payload == self.factory.settings.heartbeat:
            # Answer at once: a client counting missed heartbeats stays happy
            # even while other traffic keeps the socket busy.
            self._send_heartbeat()
            return
        if self.v2 is not None:
            self.v2.received(payload, isBinary)
            return
        if self.factory.settings.message_signal:
            signalling.plain_message(self, payload, isBinary)
        if not payload or not self.subscriber.publishers or not self.may_publish():
            return
        self._last_published = payload
        d = self.subscriber.publish_message(payload)
        d.addErrback(
            lambda failure: log.warn(
                "Websocket {path}: publishing failed: {error}",
                path=logsafe.uri(self.http_request_uri),
                error=failure.getErrorMessage(),
            )
        )

    def may_publish(self) -> bool:
        """One more publication within WS4REDIS_MAX_PUBLISH_RATE; past it the
        websocket is closed (1008) and the answer is False."""
        if self._publish_bucket is not None and not self._publish_bucket.take(self.factory.reactor.seconds()):
            self._close_for_policy("Publishing too fast (WS4REDIS_MAX_PUBLISH_RATE)")
            return False
        return True

    def overflowed(self, waiting: int) -> None:
        """The client reads too slowly: ``waiting`` bytes are already queued for it."""
        if self.state == self.STATE_OPEN:
            self._close_for_policy(f"Too slow: {waiting} bytes waiting (WS4REDIS_MAX_BUFFERED_BYTES)")
        else:
            # Still not reading what came before its close frame (or the
            # handshake's answer): give up on it.
            self.dropConnection(abort=True)

    # -- close ---------------------------------------------------------------------

    def _close_for_policy(self, reason: str) -> None:
        """Close with 1008 (policy violation), once, and say why in the log.
        Nothing more is read from this client (parsing a flood is the very
        cost to stop): the close handshake's timeout drops the connection."""
        self._deaf = True
        self.update_reading()
        if self.state != self.STATE_OPEN:
            return
        log.warn(
            "WSPOLICY {path} {peer}: {reason}",
            path=logsafe.uri(self.http_request_uri),
            peer=logsafe.text(self.peer),
            reason=reason,
        )
        self.sendCloseFrame(code=1008, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def onClose(self, wasClean, code, reason):
        try:
            if self._heartbeat_call is not None and self._heartbeat_call.active():
                self._heartbeat_call.cancel()
            if self.subscriber is not None:
                self.subscriber.release()
            if self.v2 is not None:
                self.v2.close()
            if self._counted:
                self._counted = False
                self.factory.presence.left(self.facility, self.username)  # type: ignore[union-attr]  # counted: presence is on
        finally:
            # Whatever failed above, the socket leaves the open ones (and the gauge) once.
            opened = self in self.factory.connections
            if opened:
                self.factory.connections.discard(self)
                self.factory.stats.websocket_closed(self.facility, code, wasClean)
        if opened:
            same_session = self.factory.sessions.get(self.session_digest)  # type: ignore[arg-type]  # None: no entry
            if same_session is not None:
                same_session.discard(self)
                if not same_session:
                    del self.factory.sessions[self.session_digest]  # type: ignore[arg-type]  # (not None: it had one)
            log.info(
                "WSDISCONNECT {path} {peer} code={code}",
                path=logsafe.uri(self.http_request_uri),
                peer=logsafe.text(self.peer),
                code=code,
            )
            signalling.disconnected(self, code if wasClean else None)


def wait_until(reactor, done: Callable[[], bool], timeout: float, every: float = 0.05) -> defer.Deferred:
    """A Deferred that fires (with ``done()``'s last answer) once ``done()`` is
    true or ``timeout`` seconds have passed."""
    result: defer.Deferred[bool] = defer.Deferred()

    def check(remaining: float) -> None:
        answer = done()
        if answer or remaining <= 0:
            result.callback(answer)
        else:
            reactor.callLater(every, check, remaining - every)

    check(timeout)
    return result


class WebSocketFactory(WebSocketServerFactory):
    protocol = WebSocketProtocol  # type: ignore[assignment]  # a protocol class, as Factory wants

    def __init__(self, settings: Settings, bus: RedisBus | ClusterBus, pool, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(server=f"twisted_ws4redis/{__version__}", reactor=reactor)
        self.settings = settings
        self.bus = bus
        self.pool = pool
        self.connections: set[WebSocketProtocol] = set()
        #: websockets and client connections against the descriptor caps; the service applies them
        self.budget: ConnectionBudget = ConnectionBudget(settings.reserved_descriptors, settings.max_connections)
        #: the open websockets by session digest, so that a logout (which every
        #: node hears) costs each node a lookup, not a pass over all its sockets
        self.sessions: dict[str, set[WebSocketProtocol]] = {}
        #: digest -> reactor time, oldest first, of sessions recently ended
        self._ended: OrderedDict[str, float] = OrderedDict()
        self.outbox = Outbox(self.reactor, settings.max_buffered_bytes)
        #: the counters the metrics read (metrics.py)
        self.stats = Stats(settings.metrics_facilities)
        #: who is connected to which facility (WS4REDIS_PRESENCE; set by the service)
        self.presence: NodePresence | None = None
        self.setProtocolOptions(
            webStatus=False,
            # RFC 6455 only: drafts (version 8) have been dead for a decade.
            versions=[13],
            maxMessagePayloadSize=settings.max_message_size,
            maxFramePayloadSize=settings.max_message_size,
            autoFragmentSize=0,
            # Tell a misbehaving client why (1002, 1007, 1009…) before closing.
            failByDrop=False,
            # Answer a client's close with its own code, as RFC 6455 (5.5.1) suggests.
            echoCloseCodeReason=True,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=5,
            # "null" and every other origin are judged by settings.origins in onConnect.
            allowNullOrigin=True,
        )
        # Autobahn copies each of its ~40 options from the factory into every new
        # protocol instance that lacks them: ~2 KiB per socket. As class
        # attributes of a protocol class made for this factory, nothing is copied.
        # (Functions among them, like perMessageCompressionAccept, must not become methods.)
        options = {name: getattr(self, name) for name in self.protocol.CONFIG_ATTRS}
        self.protocol = type(  # type: ignore[assignment]  # a subclass of WebSocketProtocol
            self.protocol.__name__,
            (self.protocol,),
            {name: staticmethod(value) if callable(value) else value for name, value in options.items()},
        )

    def ping_all(self) -> None:
        """Find dead peers (gone without a close or a FIN): ping every open
        websocket that has no ping outstanding, drop those whose ping went
        unanswered for WS4REDIS_AUTO_PING_TIMEOUT seconds. Run every
        WS4REDIS_AUTO_PING_INTERVAL seconds: one timer for all sockets, where
        Autobahn's own auto-ping keeps timers in each (0.6 KiB per socket)."""
        now = self.reactor.seconds()
        timeout = self.settings.auto_ping_timeout
        for connection in list(self.connections):
            if connection.state != connection.STATE_OPEN:
                continue
            if connection._ping_sent is None:
                connection._ping_sent = now
                connection._ping_payload = os.urandom(PING_PAYLOAD_SIZE)
                connection.sendPing(connection._ping_payload)
            elif now - connection._ping_sent >= timeout:
                log.warn(
                    "WSDEAD {path} {peer}: no pong in {timeout} s, dropped",
                    path=logsafe.uri(connection.http_request_uri),
                    peer=logsafe.text(connection.peer),
                    timeout=timeout,
                )
                connection.dropConnection(abort=True)

    def close_session(self, digest: str) -> int:
        """Close the websockets of the session with this digest (4401) and
        refuse its handshakes for SESSION_ENDED_MEMORY seconds; how many closed."""
        now = self.reactor.seconds()
        self._ended[digest] = now
        self._ended.move_to_end(digest)
        while now - next(iter(self._ended.values())) >= SESSION_ENDED_MEMORY:
            self._ended.popitem(last=False)
        closing = [
            connection for connection in self.sessions.get(digest, ()) if connection.state == connection.STATE_OPEN
        ]
        for connection in closing:
            connection.sendCloseFrame(
                code=SESSION_ENDED_CODE, reasonUtf8=SESSION_ENDED_REASON.encode("utf-8"), isReply=False
            )
        return len(closing)

    def session_ended(self, digest: str | None) -> bool:
        ended = self._ended.get(digest)  # type: ignore[arg-type]  # None: never ended
        return ended is not None and self.reactor.seconds() - ended < SESSION_ENDED_MEMORY

    def close_all(
        self, code: int = 1001, reason: str = "Server is shutting down", timeout: float = 3.0
    ) -> defer.Deferred:
        """Close every websocket with ``code``; fires when they are gone (or after
        ``timeout`` seconds)."""
        # sendClose() refuses the protocol's own codes (1001…); the frame-level call does not.
        reason_utf8 = reason.encode("utf-8")
        for connection in list(self.connections):
            if connection.state == connection.STATE_OPEN:
                connection.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)
        return wait_until(self.reactor, lambda: not self.connections, timeout)
