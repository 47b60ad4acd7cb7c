"""What server/pubsub.py assumes of txredisapi's parser (private parts: its
``setLineMode``/``line_mode``), pinned: with our protocols, everything one
read from Redis brought is parsed at once. Stock txredisapi parses the rest of
a read one bulk string per reactor turn (``callLater(0)``), which made a
recovered history of N messages cost 2N turns, and let messages on the
subscriber connection overtake a recovery's reply."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from twisted_ws4redis.server.pubsub import RedisBus, _CommandProtocol, _SubscriberProtocol

#: Two XRANGE entries, then a bulk string: the replies of two commands in one read.
TWO_REPLIES = (
    b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nm\r\n$5\r\nhello\r\n"
    b"*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nm\r\n$5\r\nworld\r\n$4\r\nkept\r\n"
)


def connected(protocol):
    protocol.transport = StringTransport()
    protocol.connected = 1
    return protocol


def test_the_command_connection_answers_every_reply_of_one_read_at_once():
    protocol = connected(_CommandProtocol(None, convertNumbers=False))
    answers = []
    protocol.execute_command("XRANGE", "stream", "-", "+").addBoth(answers.append)
    protocol.execute_command("GET", "key").addBoth(answers.append)
    protocol.dataReceived(TWO_REPLIES)  # no reactor turn follows: nothing may wait for one
    assert answers == [[[b"1-0", [b"m", b"hello"]], [b"2-0", [b"m", b"world"]]], b"kept"]


class Bus:
    """The calls a subscriber protocol makes on its bus."""

    def __init__(self):
        self.messages = []
        self._subscriber = None

    def _message(self, channel, payload):
        self.messages.append((channel, payload))

    def _dispatch_burst(self):
        self.messages.append("dispatched")


def test_the_subscriber_delivers_every_message_of_one_read_at_once():
    protocol = connected(_SubscriberProtocol(None, convertNumbers=False))
    bus = Bus()
    protocol.factory = type("Factory", (), {"bus": bus})()
    burst = b"".join(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(p), p) for p in (b"a", b"bb", b"ccc"))
    protocol.dataReceived(burst)
    # dispatched together once the read is parsed (pubsub.Burst)
    assert bus.messages == [(b"ch", b"a"), (b"ch", b"bb"), (b"ch", b"ccc"), "dispatched"]


def test_the_bus_builds_its_command_connection_with_that_protocol():
    from twisted_ws4redis.redis_address import RedisAddress

    bus = RedisBus(RedisAddress.from_dict({"host": "127.0.0.1", "port": 1}, "test"))
    assert bus._commands.protocol is _CommandProtocol
