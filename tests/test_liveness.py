"""Heartbeats both ways, closing, and the cost of many sockets: one Redis
subscriber connection per server process, channels released after their last
socket."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time

import pytest
import redis

from conftest import TwistdServer, open_ws, unique, wait_subscribed

HEARTBEAT = "--heartbeat--"
HEARTBEATING = {"WS4REDIS_HEARTBEAT": HEARTBEAT}
TIMEOUT = 5


def wait_unsubscribed(client: redis.Redis, channel: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while dict(client.pubsub_numsub(channel)).get(channel.encode(), 0):
        assert time.monotonic() < deadline, f"{channel!r} still subscribed after {timeout}s"
        time.sleep(0.02)


# -- heartbeat ----------------------------------------------------------------------


def test_heartbeat_at_open_and_after_four_idle_seconds(twistd_servers, server, redis_client):
    """With WS4REDIS_HEARTBEAT the first frame is a heartbeat and an idle
    socket gets another ~4 s later; without it, an idle socket gets nothing."""
    beating = twistd_servers(HEARTBEATING)
    facility = unique("idle")
    with (
        open_ws(beating, f"{facility}?subscribe-broadcast") as ws,
        open_ws(server, f"{facility}?subscribe-broadcast") as quiet,
    ):
        assert ws.recv(timeout=TIMEOUT) == HEARTBEAT
        opened = time.monotonic()
        assert ws.recv(timeout=8) == HEARTBEAT
        assert 3.5 <= time.monotonic() - opened <= 6.0
        with pytest.raises(TimeoutError):
            quiet.recv(timeout=0.1)


def test_a_client_heartbeat_is_answered_and_never_published(twistd_servers, redis_client):
    beating = twistd_servers(HEARTBEATING)
    facility = unique("beat")
    channel = f"broadcast:{facility}"
    listener = redis_client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    with open_ws(beating, f"{facility}?publish-broadcast") as ws:
        assert ws.recv(timeout=TIMEOUT) == HEARTBEAT  # the one at open
        ws.send(HEARTBEAT)
        assert ws.recv(timeout=1) == HEARTBEAT
        ws.send("a real message")
        # One connection's messages are published in order: had the heartbeat
        # been published, it would come first.
        assert listener.get_message(timeout=TIMEOUT)["data"] == b"a real message"
    listener.close()


# -- closing ------------------------------------------------------------------------


def test_a_clean_close_is_answered_and_logged(server, redis_client):
    facility = unique("bye")
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        ws.close(1000, "done")
        assert ws.protocol.close_rcvd.code == 1000
    wait_unsubscribed(redis_client, f"broadcast:{facility}")
    log = server.log()
    assert f"WSCONNECT /ws/{facility}" in log
    assert f"WSDISCONNECT /ws/{facility}" in log


def test_a_peer_that_vanishes_is_cleaned_up(server, redis_client):
    """No close frame, just a dropped TCP connection: the channel is released."""
    facility = unique("vanish")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/{facility}?subscribe-broadcast HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    wait_subscribed(redis_client, f"broadcast:{facility}")
    sock.close()
    wait_unsubscribed(redis_client, f"broadcast:{facility}")


def test_a_channel_lives_as_long_as_its_last_socket(server, redis_client):
    facility = unique("refcount")
    channel = f"broadcast:{facility}"
    with (
        open_ws(server, f"{facility}?subscribe-broadcast") as first,
        open_ws(server, f"{facility}?subscribe-broadcast") as second,
    ):
        wait_subscribed(redis_client, channel)
        first.close()
        # Still one subscriber (the server's shared connection), and it delivers.
        assert redis_client.publish(channel, "still there") == 1
        assert second.recv(timeout=TIMEOUT) == "still there"
    wait_unsubscribed(redis_client, channel)


# -- scale --------------------------------------------------------------------------


@pytest.fixture
def private_server(tmp_path, test_db):
    """A server alone on its own redis-server, so CLIENT LIST shows only it."""
    from conftest import free_port
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    redis_server = EmbeddedRedis(port=free_port())
    redis_server.start()
    server = TwistdServer(f"redis://127.0.0.1:{redis_server.port}/0", test_db)
    server.test_redis = redis_server
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield server, client
    client.close()
    server.stop()
    redis_server.stop()


def server_connections(client: redis.Redis) -> list[dict]:
    own = client.client_id()
    return [c for c in client.client_list() if int(c["id"]) != own]


def test_two_hundred_sockets_share_one_subscriber_connection(private_server):
    server, client = private_server
    # The command connection is lazy: publish once so that it exists too.
    facilities = [unique("many") for _ in range(5)]
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(open_ws(server, f"{facilities[n % 5]}?subscribe-broadcast&publish-broadcast"))
            for n in range(200)
        ]
        for facility in facilities:
            wait_subscribed(client, f"broadcast:{facility}")
        sockets[0].send("from socket 0")
        received = [ws.recv(timeout=TIMEOUT) for ws in sockets[5::5]]
        assert received == ["from socket 0"] * len(received)

        connections = server_connections(client)
        subscribers = [c for c in connections if int(c.get("sub", 0)) > 0]
        assert len(subscribers) == 1
        assert int(subscribers[0]["sub"]) == 5 + 1  # and the node control channel
        assert len(connections) == 2, connections  # the subscriber and the command connection
    deadline = time.monotonic() + TIMEOUT
    while client.pubsub_channels() != [b"ws4redis:control"]:
        assert time.monotonic() < deadline, f"still subscribed: {client.pubsub_channels()}"
        time.sleep(0.05)
    with open_ws(server, f"{facilities[0]}?subscribe-broadcast") as ws:
        wait_subscribed(client, f"broadcast:{facilities[0]}")
        client.publish(f"broadcast:{facilities[0]}", "after the crowd left")
        assert ws.recv(timeout=TIMEOUT) == "after the crowd left"


def test_subscriptions_come_back_after_redis_restarts(private_server):
    """Redis goes away and comes back on the same port: the websockets stay
    open, the shared subscriber reconnects and subscribes every channel again."""
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    server, client = private_server
    redis_process = server.test_redis
    facilities = [unique("restart") for _ in range(3)]
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_ws(server, f"{facility}?subscribe-broadcast")) for facility in facilities]
        for facility in facilities:
            wait_subscribed(client, f"broadcast:{facility}")
        redis_process.stop()
        restarted = EmbeddedRedis(port=redis_process.port)
        restarted.start()
        try:
            fresh = redis.Redis(host="127.0.0.1", port=restarted.port)
            for facility in facilities:
                wait_subscribed(fresh, f"broadcast:{facility}", timeout=15)
            wait_subscribed(fresh, "ws4redis:control")  # the node control channel is back too
            for ws, facility in zip(sockets, facilities, strict=True):
                fresh.publish(f"broadcast:{facility}", f"back for {facility}")
                assert ws.recv(timeout=TIMEOUT) == f"back for {facility}"
            fresh.close()
        finally:
            restarted.stop()


def test_a_password_protected_redis(tmp_path, test_db):
    """AUTH on both connections (txredisapi's handshake replies pass through the
    subscriber's own reply routing)."""
    from conftest import free_port
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    private = EmbeddedRedis(port=free_port())
    private.start()
    client = redis.Redis(host="127.0.0.1", port=private.port)
    client.config_set("requirepass", "s3cret")
    client = redis.Redis(host="127.0.0.1", port=private.port, password="s3cret")
    server = TwistdServer(f"redis://:s3cret@127.0.0.1:{private.port}/0", test_db)
    try:
        facility = unique("auth")
        with open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
            wait_subscribed(client, f"broadcast:{facility}")
            ws.send("through AUTH")
            assert ws.recv(timeout=TIMEOUT) == "through AUTH"
    finally:
        server.stop()
        client.close()
        private.stop()
