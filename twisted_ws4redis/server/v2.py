"""The ``ws4redis.v2`` protocol of one websocket: JSON ops, subscriptions
added and dropped while it runs, and recovery of what a client missed.

A socket's ops are handled one at a time, in order: while one waits (for
Django on the thread pool, or for Redis) nothing more is read from the socket
(``busy``), so a client cannot pile up work, and replies never reorder.

A subscription starts by listening (its live messages wait in a backlog),
then reads what came before from Redis (the history after ``since``, or the
persisted message), sends that, and then the backlog minus what the history
already held (by id): no gap, no duplicate.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, cast

import txredisapi
from django.core.exceptions import PermissionDenied
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import audience, history, logsafe, presence
from ..django_bridge import authorize_op, defer_to_django
from . import signalling
from .pubsub import REDIS_WAIT, Burst, PubSubMessage, Replayed

if TYPE_CHECKING:
    from .protocol import WebSocketProtocol

log = Logger()

SUBPROTOCOL = "ws4redis.v2"

Pair = tuple[str, str]  # (facility, audience)

#: What a command meets when Redis is away or slow: our timeout, txredisapi's.
REDIS_FAILURES = (defer.TimeoutError, defer.CancelledError, txredisapi.TimeoutError, txredisapi.ConnectionError)

#: How deeply lists and objects may nest in a ``ref``. Each reply encodes it
#: again, deeper in the stack than where it was parsed: near Python's recursion
#: limit (about 960 levels) that raised, and the op went unanswered.
MAX_REF_DEPTH = 32


class Refused(Exception):
    """An op answered with an ``error``: its code (as HTTP's) and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _nesting(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in ``value`` (0: a scalar), counted
    without recursion, up to ``limit`` + 1."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def message_frame(pair: Pair, message: PubSubMessage) -> bytes:
    """A ``message`` op's JSON."""
    op = {"op": "message", "facility": pair[0], "audience": pair[1], "id": message.id}
    if message.is_binary:
        op["data_b64"] = base64.b64encode(message.payload).decode("ascii")
    else:
        op["data"] = message.payload.decode("utf-8")
    return _json(op)


class Subscription:
    """One (facility, audience) of a websocket: a listener of its channels."""

    __slots__ = ("backlog", "channels", "counted", "pair", "replayed", "session", "watch")

    def __init__(self, session: V2Session, pair: Pair, channels: list[str]):
        self.session = session
        self.pair = pair
        self.channels = channels
        #: live messages waiting for the recovered ones; None once live
        self.backlog: list[PubSubMessage] | None = []
        self.replayed = Replayed()
        #: the socket counts as connected to the facility for this subscription (presence)
        self.counted = False
        #: the facility's join and leave events it asked for
        self.watch: PresenceWatch | None = None

    def __call__(self, messages: Burst) -> None:
        if self.backlog is not None:
            self.backlog.extend(messages)
        elif messages.channel in self.replayed:
            kept = [message for message in messages if not self.replayed.delivered(message)]
            self.session.deliver(self, messages if len(kept) == len(messages) else Burst(messages.channel, kept))
        else:
            self.session.deliver(self, messages)

    def go_live(self) -> None:
        backlog, self.backlog = self.backlog or [], None
        self.session.deliver(self, Burst(b"", [message for message in backlog if not self.replayed.delivered(message)]))


class PresenceWatch:
    """The join and leave events of one facility for one websocket, however
    many of its subscriptions asked for them. They wait until the first
    ``subscribed`` reply has gone (with the state they follow)."""

    __slots__ = ("backlog", "channel", "session", "subscriptions")

    def __init__(self, session: V2Session, channel: str):
        self.session = session
        self.channel = channel
        self.subscriptions = 0
        self.backlog: list[PubSubMessage] | None = []

    def __call__(self, messages: Burst) -> None:
        if self.backlog is not None:
            self.backlog.extend(messages)
        else:
            self.session.send_events(messages)

    def go_live(self) -> None:
        backlog, self.backlog = self.backlog or [], None
        self.session.send_events(Burst(b"", backlog))


class V2Session:
    """The ws4redis.v2 state of one websocket."""

    def __init__(self, protocol: WebSocketProtocol):
        self.protocol = protocol
        self.factory = protocol.factory
        self.settings = protocol.factory.settings
        self.subscriptions: dict[Pair, Subscription] = {}
        #: publish permissions asked for once per pair, as the URL's flags are
        #: per socket (most recently used last, at most WS4REDIS_MAX_SUBSCRIPTIONS)
        self._grants: OrderedDict[Pair, list[str]] = OrderedDict()
        #: facility -> subscriptions for which the socket counts as connected to it (presence)
        self._counted: dict[str, int] = {}
        #: facility -> its join and leave events
        self._watches: dict[str, PresenceWatch] = {}
        #: an op is waiting: nothing more is read from the socket
        self.busy = False
        self.closed = False

    # -- sending ---------------------------------------------------------------

    def _put(self, frame: bytes) -> None:
        """A websocket frame, through the outbox as broadcasts go: replies and
        messages keep their order."""
        protocol = self.protocol
        if protocol.state == protocol.STATE_OPEN:
            self.factory.outbox.put(protocol, frame)
            protocol._last_sent = self.factory.reactor.seconds()

    def _reply(self, op: dict) -> None:
        self._put(self.factory.prepareMessage(_json(op), False).payloadHybi)

    def _error(self, ref: Any, code: int, reason: str) -> None:
        self._reply({"op": "error", "ref": ref, "code": code, "reason": reason})

    def deliver(self, subscription: Subscription, messages: Burst) -> None:
        """``messages`` as ``message`` ops of ``subscription``, framed once
        per (facility, audience) for every socket."""
        pair, prepare = subscription.pair, self.factory.prepareMessage

        def frame(message: PubSubMessage) -> bytes:
            return message.framed(pair, lambda: prepare(message_frame(pair, message), False).payloadHybi)

        self.protocol.put_burst(messages, pair, frame)

    def send_events(self, messages: Burst) -> None:
        """Presence events, as their nodes published them (JSON ops)."""
        prepare = self.factory.prepareMessage

        def frame(message: PubSubMessage) -> bytes:
            return message.framed("presence", lambda: prepare(message.payload, False).payloadHybi)

        self.protocol.put_burst(messages, "presence", frame)

    # -- ops -------------------------------------------------------------------

    def open(self, facility: str, flags: dict[str, list[str]]) -> None:
        """The URL's flags: its publish permissions and subscriptions."""
        subscribe = []
        for flag, channels in flags.items():
            kind, name = flag.split("-", 1)
            if kind == "publish":
                self._grant((facility, name), channels)
            else:
                subscribe.append(((facility, name), channels))
        if subscribe:
            self._wait_for(self._start_all(subscribe), None)

    @defer.inlineCallbacks
    def _start_all(self, subscribe: list[tuple[Pair, list[str]]]):
        for pair, channels in subscribe:
            yield self._start(channels, pair, None, None, False)

    def received(self, payload: bytes, is_binary: bool) -> None:
        """One op from the client."""
        ref = None
        try:
            op = self._decode(payload, is_binary)
            ref = op.get("ref")
            if _nesting(ref, MAX_REF_DEPTH) > MAX_REF_DEPTH:
                ref = None
                raise Refused(400, f"ref may nest {MAX_REF_DEPTH} levels at most")
            try:
                _json(ref)
            except ValueError:
                ref = None
                raise Refused(400, "ref must be a JSON value (no NaN or infinity)") from None
            name = op.get("op")
            work: defer.Deferred | None
            if name == "subscribe":
                work = self._subscribe(op, ref)
            elif name == "publish":
                work = self._publish(op, ref)
            elif name == "unsubscribe":
                self._unsubscribe(op, ref)
                work = None
            elif name == "send":
                self._send(op, ref)
                work = None
            else:
                raise Refused(400, "op must be 'subscribe', 'unsubscribe', 'publish' or 'send'")
        except Refused as refused:
            self._error(ref, refused.code, refused.reason)
            return
        if work is not None:
            self._wait_for(work, ref)

    def _decode(self, payload: bytes, is_binary: bool) -> dict:
        if is_binary:
            raise Refused(400, "ws4redis.v2 ops are JSON text frames")
        try:
            op = json.loads(payload)
        except (ValueError, RecursionError):
            raise Refused(400, "Not JSON") from None
        if not isinstance(op, dict):
            raise Refused(400, "An op is a JSON object")
        return op

    def _pair(self, op: dict) -> Pair:
        facility, name = self._facility(op), op.get("audience")
        if not isinstance(name, str) or name not in audience.AUDIENCES:
            raise Refused(400, "audience must be 'broadcast', 'group', 'user' or 'session'")
        return facility, name

    def _facility(self, op: dict) -> str:
        facility = op.get("facility")
        if not isinstance(facility, str) or not self.settings.facility_pattern.fullmatch(facility):
            raise Refused(400, "The facility is not allowed (see WS4REDIS_FACILITY_PATTERN)")
        try:
            facility.encode("utf-8")  # JSON's escapes allow lone surrogates, which no channel name can hold
        except UnicodeEncodeError:
            raise Refused(400, "The facility is not valid Unicode") from None
        return facility

    def _authorized(self, pair: Pair, kind: str, presence: bool = False) -> defer.Deferred:
        """The channels of ``pair`` for ``kind`` ('subscribe', 'publish'), as
        Django decides on the thread pool (``presence``: its events too)."""
        protocol = self.protocol
        d = defer_to_django(
            self.factory.reactor,
            self.factory.pool,
            authorize_op,
            protocol.django_request,
            pair[0],
            f"{kind}-{pair[1]}",
            self.settings,
            self.factory.bus,
            presence,
        )

        def refused(failure: Failure):
            failure.trap(PermissionDenied)
            raise Refused(403, str(failure.value) or "Forbidden")

        return d.addErrback(refused)

    def _wait_for(self, work: defer.Deferred, ref: Any) -> None:
        self.busy = True
        self.protocol.update_reading()

        def failed(failure: Failure) -> None:
            while failure.check(defer.FirstError):  # from gatherResults: the error itself
                failure = cast(defer.FirstError, failure.value).subFailure
            if failure.check(Refused):
                refused = cast(Refused, failure.value)
                self._error(ref, refused.code, refused.reason)
            elif failure.check(*REDIS_FAILURES):
                self._error(ref, 503, "Redis did not answer")
            else:
                log.failure(
                    "A ws4redis.v2 op of {path} failed", failure, path=logsafe.uri(self.protocol.http_request_uri)
                )
                self._error(ref, 500, "Internal Server Error")

        def done(_) -> None:
            self.busy = False
            # Not from inside the frame parser that delivered this op.
            self.factory.reactor.callLater(0, self.protocol.read_on)

        work.addErrback(failed).addBoth(done)

    def _subscribe(self, op: dict, ref: Any) -> defer.Deferred:
        pair = self._pair(op)
        since = op.get("since")
        if since is not None:
            parsed = history.parse_id(since)
            if parsed is None:
                raise Refused(400, "since must be a message id, such as '1733059200000-0'")
            since = history.format_id(parsed)
        wants_presence = op.get("presence")
        if wants_presence is None:  # null is absent, as for since
            wants_presence = False
        elif not isinstance(wants_presence, bool):
            raise Refused(400, "presence must be true or false")
        if wants_presence and self.factory.presence is None:
            raise Refused(400, "Presence is off on this server (WS4REDIS_PRESENCE)")
        limit = self.settings.max_subscriptions
        if pair not in self.subscriptions and len(self.subscriptions) >= limit:
            raise Refused(429, f"At most {limit} subscriptions per websocket (WS4REDIS_MAX_SUBSCRIPTIONS)")
        return self._authorized(pair, "subscribe", wants_presence).addCallback(
            self._start, pair, since, ref, wants_presence
        )

    @defer.inlineCallbacks
    def _start(self, channels: list[str], pair: Pair, since: str | None, ref: Any, wants_presence: bool):
        if self.closed:
            return
        old = self.subscriptions.pop(pair, None)
        if old is not None:
            # Its messages stop now; its presence once the new one counts,
            # so that a replacement is neither a leave nor a join.
            self._unlisten(old)
        subscription = self.subscriptions[pair] = Subscription(self, pair, channels)
        bus, reactor = self.factory.bus, self.factory.reactor
        try:
            listens = [bus.listen(channel, subscription) for channel in channels]
            if wants_presence:
                listens.append(self._watch(subscription))
            yield defer.gatherResults(listens, consumeErrors=True).addTimeout(REDIS_WAIT, reactor)
            if self.subscriptions.get(pair) is subscription:  # not closed meanwhile
                self._count(subscription)
            state = None
            if wants_presence:
                # Written before it is read (one connection, in order): this socket counts.
                self.factory.presence.flush()  # type: ignore[union-attr]  # asked only when presence is on
                keys, args = presence.read_call(pair[0], self.settings.prefix)
                state = yield bus.script(presence.READ_SCRIPT, keys, args).addTimeout(REDIS_WAIT, reactor)
            recovered = None
            found: list[list | None] = [None] * len(channels)  # each channel's history entries, if recovered
            if since is not None and self.settings.history_size:
                found = yield defer.gatherResults(
                    [bus.recover(channel, since) for channel in channels], consumeErrors=True
                ).addTimeout(REDIS_WAIT, reactor)
                recovered = all(entries is not None for entries in found)
            elif since is not None:
                recovered = False
            # A channel whose history does not reach back: its persisted message.
            current = yield defer.gatherResults(
                [
                    bus.current(channel) if entries is None else defer.succeed(None)
                    for channel, entries in zip(channels, found, strict=False)
                ],
                consumeErrors=True,
            ).addTimeout(REDIS_WAIT, reactor)
        except Exception:
            if self.subscriptions.get(pair) is subscription:
                del self.subscriptions[pair]
                self._release(subscription)
            raise
        finally:
            if old is not None:
                self._uncount(old)
        if self.closed or self.subscriptions.get(pair) is not subscription:
            return
        reply = {"op": "subscribed", "facility": pair[0], "audience": pair[1], "ref": ref}
        if since is not None:
            reply["recovered"] = recovered
        if state is not None:
            reply["presence"] = presence.parse_read(state)
        self._reply(reply)
        if subscription.watch is not None:
            subscription.watch.go_live()
        replay: list[tuple[tuple[int, int] | None, bytes, Any]] = []
        for channel, entries, kept in zip(channels, found, current, strict=False):
            key = channel.encode("utf-8")
            if kept is not None:
                replay.append((None, key, kept))
            for message_id, payload in entries or []:
                replay.append((history.parse_id(message_id), key, (message_id, payload)))
        # Persisted messages first (in channel order), then the history by id.
        replay.sort(key=lambda item: (item[0] is not None, item[0] or (0, 0)))
        for parsed, key, _ in replay:
            if parsed is not None:
                subscription.replayed.note(key, parsed)
        self.deliver(
            subscription,
            Burst(
                b"",
                [
                    PubSubMessage(key, payload, live=False, message_id=message_id)
                    for _, key, (message_id, payload) in replay
                ],
            ),
        )
        subscription.go_live()

    def _unsubscribe(self, op: dict, ref: Any) -> None:
        pair = self._pair(op)
        subscription = self.subscriptions.pop(pair, None)
        if subscription is not None:
            self._release(subscription)
        self._reply({"op": "unsubscribed", "facility": pair[0], "audience": pair[1], "ref": ref})

    def _publish(self, op: dict, ref: Any) -> defer.Deferred | None:
        pair = self._pair(op)
        payload = self._data(op)
        if not self.protocol.may_publish():
            return None
        channels = self._grants.get(pair)
        if channels is not None:
            self._grants.move_to_end(pair)
            return self._publication(channels, payload, ref)

        def granted(channels: list[str]) -> defer.Deferred | None:
            if self.closed:
                return None  # gone while Django decided: nobody asked for it any more
            self._grant(pair, channels)
            return self._publication(channels, payload, ref)

        return self._authorized(pair, "publish").addCallback(granted)

    def _send(self, op: dict, ref: Any) -> None:
        """Data for the server's receivers of ``websocket_message`` (signals.py),
        not for Redis; ``sent`` once they returned, their replies before it."""
        if not self.settings.message_signal:
            raise Refused(400, "send needs WS4REDIS_MESSAGE_SIGNAL = True on the server")
        facility = self._facility(op)
        payload = self._data(op)

        def deliver(payload: bytes, is_binary: bool) -> None:
            reply = {"op": "reply", "facility": facility, "ref": ref}
            if is_binary:
                reply["data_b64"] = base64.b64encode(payload).decode("ascii")
            else:
                reply["data"] = payload.decode("utf-8")
            self._reply(reply)

        message = payload if "data_b64" in op else op["data"]
        signalling.message(self.protocol, facility, message, deliver).addCallback(
            lambda _: self._reply({"op": "sent", "ref": ref})
        )

    def _data(self, op: dict) -> bytes:
        if "data_b64" in op:
            try:
                payload = base64.b64decode(op["data_b64"], validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise Refused(400, "data_b64 must be base64") from None
        else:
            data = op.get("data")
            if not isinstance(data, str):
                raise Refused(400, "data must be a string (or data_b64, base64)")
            try:
                payload = data.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, "data is not valid Unicode") from None
        if not payload:
            raise Refused(400, "data is empty")
        return payload

    def _grant(self, pair: Pair, channels: list[str]) -> None:
        self._grants[pair] = channels
        self._grants.move_to_end(pair)
        while len(self._grants) > self.settings.max_subscriptions:
            self._grants.popitem(last=False)

    def _publication(self, channels: list[str], payload: bytes, ref: Any) -> defer.Deferred:
        """Publish; answer ``published`` with the first channel's id when Redis
        has. The op waits for that (a cached grant too): an op read meanwhile
        would be answered first, and a flood of publishes would pile up in
        Redis' queue unread."""
        d = self.factory.bus.publish(channels, payload, self.settings.expire)

        def failed(failure: Failure) -> None:
            log.warn(
                "Websocket {path}: publishing failed: {error}",
                path=logsafe.uri(self.protocol.http_request_uri),
                error=failure.getErrorMessage(),
            )
            raise Refused(503, "Redis did not answer")

        return d.addCallbacks(
            lambda ids: self._reply({"op": "published", "ref": ref, "id": ids[0] if ids else None}), failed
        )

    # -- end -------------------------------------------------------------------

    def _release(self, subscription: Subscription) -> None:
        self._unlisten(subscription)
        self._uncount(subscription)

    def _unlisten(self, subscription: Subscription) -> None:
        subscription.backlog = None
        for channel in subscription.channels:
            self.factory.bus.unlisten(channel, subscription)

    def _uncount(self, subscription: Subscription) -> None:
        """The subscription's part in presence ends: its count, its events."""
        facility = subscription.pair[0]
        if subscription.counted:
            subscription.counted = False
            self._counted[facility] -= 1
            if not self._counted[facility]:
                del self._counted[facility]
                self.factory.presence.left(facility, self.protocol.username)  # type: ignore[union-attr]  # as counted
        watch, subscription.watch = subscription.watch, None
        if watch is not None:
            watch.subscriptions -= 1
            if not watch.subscriptions:
                del self._watches[facility]
                self.factory.bus.unlisten(watch.channel, watch)

    # -- presence --------------------------------------------------------------

    def _count(self, subscription: Subscription) -> None:
        """The socket is connected to the subscription's facility (once per facility)."""
        if self.factory.presence is None:
            return
        facility = subscription.pair[0]
        subscription.counted = True
        self._counted[facility] = self._counted.get(facility, 0) + 1
        if self._counted[facility] == 1:
            self.factory.presence.joined(facility, self.protocol.username)

    def _watch(self, subscription: Subscription) -> defer.Deferred:
        """Listen to the facility's events for ``subscription``; fires once listening."""
        facility = subscription.pair[0]
        watch = self._watches.get(facility)
        if watch is None:
            watch = self._watches[facility] = PresenceWatch(
                self, presence.events_channel(facility, self.settings.prefix)
            )
            listening = self.factory.bus.listen(watch.channel, watch)
        else:
            listening = defer.succeed(None)
        watch.subscriptions += 1
        subscription.watch = watch
        return listening

    def close(self) -> None:
        self.closed = True
        for subscription in self.subscriptions.values():
            self._release(subscription)
        self.subscriptions.clear()
