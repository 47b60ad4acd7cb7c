"""Bugs of ws4redis (spec §R) that we fix rather than copy."""
import base64
import os
import socket
import struct

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import wait_subscribed


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


def _handshake(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
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
    assert len(data) == 2 + length, f"bytes after the close frame: {data[2 + length:]!r}"


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
