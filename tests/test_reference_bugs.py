"""Bugs of ws4redis (spec §R) that we fix rather than copy."""

import base64
import os
import socket
import struct

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import login, open_ws, round_trip, unique, wait_subscribed


def test_a_burst_is_delivered_whole_and_in_order(server, redis_client):
    """§R3: ws4redis forwarded one message per wake-up and stalled the rest."""
    with connect(server.ws_url("burst?subscribe-broadcast")) as ws:
        wait_subscribed(redis_client, "broadcast:burst")
        pipe = redis_client.pipeline(transaction=False)
        for number in range(300):
            pipe.publish("broadcast:burst", f"message {number}")
        pipe.execute()
        received = [ws.recv(timeout=5) for _ in range(300)]
    assert received == [f"message {number}" for number in range(300)]


def test_a_burst_on_two_channels_keeps_the_order_they_were_published_in(server, redis_client):
    """The server hands each channel's run of messages from one read of Redis
    to its sockets at once: a socket subscribed to both channels still gets
    them interleaved as Redis sent them."""
    facility = unique("interleaved")
    cookie = login(server, "john")
    channels = [f"broadcast:{facility}", f"user:john:{facility}"]
    with open_ws(server, f"{facility}?subscribe-broadcast&subscribe-user", cookie) as ws:
        for channel in channels:
            wait_subscribed(redis_client, channel)
        # runs of 1, 2, 3 and 4 messages, the channels taking turns
        order = ([0] + [1] * 2 + [0] * 3 + [1] * 4) * 20
        pipe = redis_client.pipeline(transaction=False)
        for number, which in enumerate(order):
            pipe.publish(channels[which], f"message {number}")
        pipe.execute()
        received = [ws.recv(timeout=5) for _ in range(200)]
    assert received == [f"message {number}" for number in range(200)]


def test_a_burst_skips_only_what_the_socket_itself_published(server, redis_client):
    """Without ``echo`` a socket does not get back what it published last
    (ws4redis' rule), also in the middle of a burst; the others get all."""
    facility = unique("burst-echo")
    channel = f"broadcast:{facility}"
    with (
        open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast") as publisher,
        open_ws(server, f"{facility}?subscribe-broadcast") as listener,
    ):
        wait_subscribed(redis_client, channel, count=1)
        publisher.send("mine")
        assert listener.recv(timeout=5) == "mine"
        round_trip(publisher)
        pipe = redis_client.pipeline(transaction=False)
        for text in ("one", "mine", "two", "mine", "three"):
            pipe.publish(channel, text)
        pipe.execute()
        assert [listener.recv(timeout=5) for _ in range(5)] == ["one", "mine", "two", "mine", "three"]
        assert [publisher.recv(timeout=5) for _ in range(3)] == ["one", "two", "three"]


def _handshake(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101 "), response
    return sock


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_close_answers_with_one_close_frame_and_nothing_after(server):
    """§R10: uWSGI sent an empty close frame followed by raw 'Websocket Closed'."""
    sock = _handshake(server.port, "/ws/closing?subscribe-broadcast")
    sock.sendall(_masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data[0] == 0x88  # FIN + close
    length = data[1] & 0x7F
    assert struct.unpack("!H", data[2:4])[0] == 1000
    assert len(data) == 2 + length, f"bytes after the close frame: {data[2 + length :]!r}"


def test_a_message_over_the_size_limit_closes_only_that_socket(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_MAX_MESSAGE_SIZE": 1000})
    with connect(server.ws_url("limits?subscribe-broadcast&publish-broadcast&echo")) as bystander:
        wait_subscribed(redis_client, "broadcast:limits")
        with connect(server.ws_url("limits?publish-broadcast"), max_size=None) as offender:
            offender.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as closed:
                offender.recv(timeout=5)
        assert closed.value.rcvd.code == 1009  # message too big
        bystander.send("still here")
        assert bystander.recv(timeout=5) == "still here"
