"""Server-side signals end to end (issue 13): websocket_connected,
websocket_message and websocket_disconnected sent by real ``twistd
ws4redis`` processes to the receivers of tests/project/testproject/receivers.py,
which record what they saw in Redis (signals:<tag>).

A socket's signals are sent in order, each after the one before returned, so
a ``disconnected`` record proves that no message signal of that socket is
still to come: absence is shown without waiting.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import time

from websockets.sync.client import connect

from conftest import login, open_ws, recording, unique, wait_subscribed

TIMEOUT = 5
V2 = "ws4redis.v2"
#: The server's pool threads (service.py names the pool).
POOL_THREAD = "PoolThread-ws4redis-django-"

RECEIVERS = {"TEST_SIGNAL_RECEIVERS": True}
MESSAGES = {**RECEIVERS, "WS4REDIS_MESSAGE_SIGNAL": True}
#: Seconds the receiver of a "slow:" message sleeps.
SLOW = 0.5


def connect_v2(server, path: str):
    return connect(server.ws_url(path), subprotocols=[V2], open_timeout=TIMEOUT)


def records(redis_client, tag: str, until: str = "disconnected", count: int = 1) -> list[dict]:
    """What the receivers recorded for ``tag``, once ``count`` records of signal ``until`` are among them."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [json.loads(item) for item in redis_client.lrange(f"signals:{tag}", 0, -1)]
        if sum(record["signal"] == until for record in found) >= count:
            return found
        assert time.monotonic() < deadline, f"no {until!r} record after {TIMEOUT}s: {found}"
        time.sleep(0.02)


def test_connected_then_messages_then_disconnected_on_pool_threads(twistd_servers, redis_client):
    server = twistd_servers(MESSAGES)
    facility = unique("order")
    with open_ws(
        server, f"{facility}?subscribe-broadcast&subscribe-user&publish-broadcast", login(server, "john")
    ) as ws:
        for message in ("one", b"\x00two", "three"):
            ws.send(message)
        ws.close(code=4001)
    seen = records(redis_client, facility)
    assert [record["signal"] for record in seen] == ["connected", "message", "message", "message", "disconnected"]
    assert seen[0]["channels"] == [f"broadcast:{facility}", f"user:john:{facility}"]
    assert [(record["message"], record["binary"]) for record in seen[1:4]] == [
        ("one", False),
        (base64.b64encode(b"\x00two").decode(), True),
        ("three", False),
    ]
    assert seen[-1]["code"] == 4001
    assert {record["facility"] for record in seen} == {facility}
    assert {record["user"] for record in seen} == {"john"}  # the handshake's request, authenticated
    for record in seen:
        assert record["thread"].startswith(POOL_THREAD), record
    # Each started after the one before returned.
    for before, after in itertools.pairwise(seen[1:4]):  # the messages
        assert after["started"] >= before["returned"]


def test_the_message_signal_is_off_by_default(twistd_servers, redis_client):
    server = twistd_servers(RECEIVERS)
    tag = unique("off")
    with open_ws(server, f"{tag}?tag={tag}&publish-broadcast") as ws:
        ws.send("reply:not for the server")
    with connect_v2(server, f"?tag={tag}") as ws:
        ws.send(json.dumps({"op": "send", "facility": tag, "data": "reply:no", "ref": 1}))
        refused = json.loads(ws.recv(timeout=TIMEOUT))
    assert refused["op"] == "error"
    assert refused["ref"] == 1
    assert refused["code"] == 400
    assert "WS4REDIS_MESSAGE_SIGNAL" in refused["reason"]
    seen = records(redis_client, tag, count=2)
    # Two sockets: each one's records in order, the two interleaved.
    assert sorted(record["signal"] for record in seen) == ["connected"] * 2 + ["disconnected"] * 2


def test_a_receiver_that_raises_is_logged_and_the_socket_goes_on(twistd_servers, redis_client):
    server = twistd_servers(MESSAGES)
    facility = unique("raises")
    with open_ws(server, facility) as ws:
        ws.send("raise:now")
        ws.send("reply:still here")
        assert ws.recv(timeout=TIMEOUT) == "re:still here"
    seen = records(redis_client, facility)
    # The receiver after the one that raised was called for both messages.
    assert [record.get("message") for record in seen if record["signal"] == "message"] == [
        "raise:now",
        "reply:still here",
    ]
    deadline = time.monotonic() + TIMEOUT
    while "RuntimeError: receiver failed on purpose" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    log = server.log()
    assert "Error calling raising in Signal.send_robust()" in log
    assert "Traceback" in log
    assert "in raising" in log  # the receiver's own frame


def test_replies_reach_that_socket_alone_as_text_or_binary(twistd_servers, redis_client):
    server = twistd_servers(MESSAGES)
    facility = unique("reply")
    with (
        open_ws(server, f"{facility}?subscribe-broadcast") as other,
        open_ws(server, f"{facility}?publish-broadcast") as ws,
    ):
        wait_subscribed(redis_client, f"broadcast:{facility}")
        ws.send("reply:text")
        assert ws.recv(timeout=TIMEOUT) == "re:text"
        ws.send(b"reply:\xff\x00")
        assert ws.recv(timeout=TIMEOUT) == b"re:\xff\x00"
        # The messages were published as before; the other socket got those, not the replies.
        assert other.recv(timeout=TIMEOUT) == "reply:text"
        assert other.recv(timeout=TIMEOUT) == b"reply:\xff\x00"


def test_v2_send_op_goes_to_the_receivers_and_is_answered(twistd_servers, redis_client):
    server = twistd_servers(MESSAGES)
    tag, facility = unique("v2"), unique("v2-facility")
    with connect_v2(server, f"?tag={tag}") as ws:
        ws.send(json.dumps({"op": "send", "facility": facility, "data": "reply:hi", "ref": [1]}))
        ws.send(
            json.dumps(
                {"op": "send", "facility": facility, "data_b64": base64.b64encode(b"reply:\x01").decode(), "ref": 2}
            )
        )
        answers = [json.loads(ws.recv(timeout=TIMEOUT)) for _ in range(4)]
    assert answers == [
        {"op": "reply", "facility": facility, "ref": [1], "data": "re:hi"},
        {"op": "sent", "ref": [1]},
        {"op": "reply", "facility": facility, "ref": 2, "data_b64": base64.b64encode(b"re:\x01").decode()},
        {"op": "sent", "ref": 2},
    ]
    seen = records(redis_client, tag)
    assert [(record["signal"], record["facility"]) for record in seen] == [
        ("connected", ""),
        ("message", facility),
        ("message", facility),
        ("disconnected", ""),
    ]
    assert seen[0]["channels"] == []
    assert (seen[1]["message"], seen[1]["binary"]) == ("reply:hi", False)
    assert (seen[2]["message"], seen[2]["binary"]) == (base64.b64encode(b"reply:\x01").decode(), True)
    # The URL's subscribe flags: their channels.
    other = unique("v2-url")
    with connect_v2(server, f"{other}?subscribe-broadcast"):
        pass
    assert records(redis_client, other)[0]["channels"] == [f"broadcast:{other}"]


def test_nothing_more_is_read_while_a_message_signal_runs(twistd_servers, redis_server, redis_client):
    """The second message is published only once the slow receiver of the
    first returned: the server did not read it before."""
    server = twistd_servers(MESSAGES)
    facility = unique("held")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send(f"slow:{SLOW}")
        ws.send("second")
        assert published.next()[1] == f"slow:{SLOW}".encode()
        assert published.next(timeout=TIMEOUT)[1] == b"second"
        second_published = time.time()
    first = records(redis_client, facility)[1]
    assert first["message"] == f"slow:{SLOW}"
    assert first["returned"] - first["started"] >= SLOW
    assert second_published >= first["returned"]


def test_disconnected_for_a_socket_dropped_without_close(twistd_servers, redis_client):
    server = twistd_servers(MESSAGES)
    facility = unique("dropped")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/{facility} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    sock.close()
    seen = records(redis_client, facility)
    assert [(record["signal"], record.get("code")) for record in seen] == [("connected", None), ("disconnected", None)]
    assert seen[0]["channels"] == []


def test_receivers_connected_for_the_documented_sender_get_every_signal(twistd_servers, redis_client):
    """Receivers connected with ``sender=WebSocketProtocol``, as the signals'
    documentation names the sender, are heard too: Django's has_listeners()
    without a sender did not count them, so they got nothing at all."""
    server = twistd_servers({"TEST_SIGNAL_RECEIVERS": "sender", "WS4REDIS_MESSAGE_SIGNAL": True})
    facility = unique("sender")
    with open_ws(server, f"{facility}?subscribe-broadcast", login(server, "john")) as ws:
        ws.send("hello")
        ws.close(code=4002)
    seen = records(redis_client, facility)
    assert [record["signal"] for record in seen] == ["connected", "message", "disconnected"]
    assert seen[-1]["code"] == 4002
    assert {record["user"] for record in seen} == {"john"}
