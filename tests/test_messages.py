"""What a message looks like on its way: the echo rule, persisted messages
(WS4REDIS_EXPIRE), text vs binary frames, fragmented client messages.

Each test has its own facility (see test_audiences.py for the ordering tricks
used to prove that something did NOT happen without sleeping).
"""

from __future__ import annotations

import time

import pytest

from conftest import login, open_ws, recording, round_trip, session_key, unique, wait_subscribed

TIMEOUT = 5


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def persisting(twistd_servers, redis_client):
    """A server that keeps every websocket-published message for 60 s."""
    return twistd_servers({"WS4REDIS_EXPIRE": 60})


# -- the echo rule (spec §13) ---------------------------------------------------------


def test_without_echo_the_sender_does_not_get_its_own_message_but_others_do(server, redis_client):
    facility = unique("echo-off")
    channel = f"broadcast:{facility}"
    with (
        open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast") as sender,
        open_ws(server, f"{facility}?subscribe-broadcast") as listener,
    ):
        wait_subscribed(redis_client, channel)
        sender.send("my own words")
        assert listener.recv(timeout=TIMEOUT) == "my own words"
        # Redis delivered it to both sockets at once; a marker published now is
        # the next thing the sender sees only if its own message was suppressed.
        redis_client.publish(channel, "marker")
        assert sender.recv(timeout=TIMEOUT) == "marker"
        assert listener.recv(timeout=TIMEOUT) == "marker"


def test_with_echo_the_sender_gets_its_own_message(server, redis_client):
    facility = unique("echo-on")
    channel = f"broadcast:{facility}"
    with (
        open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast&echo") as sender,
        open_ws(server, f"{facility}?subscribe-broadcast") as listener,
    ):
        wait_subscribed(redis_client, channel)
        sender.send("my own words")
        assert sender.recv(timeout=TIMEOUT) == "my own words"
        assert listener.recv(timeout=TIMEOUT) == "my own words"


def test_without_echo_a_redis_message_equal_to_the_last_sent_is_suppressed(server, redis_server, redis_client):
    facility = unique("echo-content")
    channel = f"broadcast:{facility}"
    with (
        recording(redis_server, facility) as published,
        open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast") as ws,
    ):
        wait_subscribed(redis_client, channel)
        ws.send("same")
        assert published.next() == (channel, b"same")
        redis_client.publish(channel, "same")  # e.g. Django published equal content
        redis_client.publish(channel, "other")
        assert ws.recv(timeout=TIMEOUT) == "other"


def test_with_echo_a_redis_message_equal_to_the_last_sent_is_delivered(server, redis_client):
    facility = unique("echo-content-on")
    channel = f"broadcast:{facility}"
    with open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
        wait_subscribed(redis_client, channel)
        ws.send("same")
        assert ws.recv(timeout=TIMEOUT) == "same"
        redis_client.publish(channel, "same")
        assert ws.recv(timeout=TIMEOUT) == "same"


# -- persisted messages (spec §11, §15) -------------------------------------------


def test_expire_stores_websocket_message_with_setex_and_replays_it(persisting, redis_client):
    facility = unique("persist-ws")
    channel = f"broadcast:{facility}"
    with open_ws(persisting, f"{facility}?publish-broadcast") as ws:
        ws.send("kept for later")
        deadline = time.monotonic() + TIMEOUT
        while redis_client.get(channel) != b"kept for later":
            assert time.monotonic() < deadline, "the message was not stored"
            time.sleep(0.01)
    assert 0 < redis_client.ttl(channel) <= 60
    with open_ws(persisting, f"{facility}?subscribe-broadcast") as later:
        assert later.recv(timeout=TIMEOUT) == "kept for later"
        wait_subscribed(redis_client, channel)
        redis_client.publish(channel, "live")
        assert later.recv(timeout=TIMEOUT) == "live"
    # replayed, not consumed: every (re)connect within the TTL gets it again
    assert redis_client.get(channel) == b"kept for later"
    with open_ws(persisting, f"{facility}?subscribe-broadcast") as again:
        assert again.recv(timeout=TIMEOUT) == "kept for later"


def test_expire_stores_on_every_publish_channel(persisting, redis_client):
    facility = unique("persist-all")
    cookie = login(persisting, "john")
    channels = [
        f"broadcast:{facility}",
        f"group:chatusers:{facility}",
        f"user:john:{facility}",
        f"session:{session_key(cookie)}:{facility}",
    ]
    flags = "publish-broadcast&publish-group&publish-user&publish-session"
    with open_ws(persisting, f"{facility}?{flags}", cookie) as ws:
        ws.send("everywhere")
        deadline = time.monotonic() + TIMEOUT
        while redis_client.mget(channels) != [b"everywhere"] * 4:
            assert time.monotonic() < deadline, redis_client.mget(channels)
            time.sleep(0.01)
    assert all(0 < redis_client.ttl(channel) <= 60 for channel in channels)


def test_expire_keeps_the_last_of_several_messages(persisting, redis_server, redis_client):
    """One key per channel holding the LAST message a socket sent (spec R16)."""
    facility = unique("persist-last")
    channel = f"broadcast:{facility}"
    messages = [f"message {number}" for number in range(50)]
    with recording(redis_server, facility) as published, open_ws(persisting, f"{facility}?publish-broadcast") as ws:
        for message in messages:
            ws.send(message)
        round_trip(ws)
        seen = [published.next() for _ in messages]
    assert sorted(payload for _, payload in seen) == sorted(message.encode() for message in messages)
    deadline = time.monotonic() + 1.0
    while redis_client.get(channel) != messages[-1].encode() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # let any straggling SETEX land before judging
    assert redis_client.get(channel) == messages[-1].encode()


def test_expire_zero_stores_nothing(server, redis_server, redis_client):
    facility = unique("persist-none")
    channel = f"broadcast:{facility}"
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send("not kept")
        round_trip(ws)
        ws.send("end")
        assert published.until(b"end") == [(channel, b"not kept"), (channel, b"end")]
    assert redis_client.keys(f"*{facility}*") == []


def test_persisted_messages_replayed_per_subscribed_channel_before_live(server, redis_client):
    facility = unique("replay")
    cookie = login(server, "john")
    channels = {
        "broadcast": f"broadcast:{facility}",
        "group": f"group:chatusers:{facility}",
        "user": f"user:john:{facility}",
        "session": f"session:{session_key(cookie)}:{facility}",
    }
    for name, channel in channels.items():
        redis_client.set(channel, f"persisted {name}")
    flags = "subscribe-session&subscribe-user&subscribe-group&subscribe-broadcast"
    with open_ws(server, f"{facility}?{flags}", cookie) as ws:
        # publish a live message as early as possible: it may arrive while the
        # persisted ones are being fetched and must still come after them
        deadline = time.monotonic() + TIMEOUT
        while redis_client.publish(channels["broadcast"], "live") < 1:
            assert time.monotonic() < deadline
        received = [ws.recv(timeout=TIMEOUT) for _ in range(5)]
    # ws4redis order: broadcast, groups, users, sessions; then live traffic
    assert received == ["persisted broadcast", "persisted group", "persisted user", "persisted session", "live"]


def test_only_subscribed_channels_are_replayed(server, redis_client):
    facility = unique("replay-only")
    cookie = login(server, "john")
    redis_client.set(f"broadcast:{facility}", "persisted broadcast")
    redis_client.set(f"group:chatusers:{facility}", "persisted group")
    redis_client.set(f"user:john:{facility}", "persisted user")
    redis_client.set(f"user:mary:{facility}", "persisted for mary")
    redis_client.set(f"session:{session_key(cookie)}:{facility}", "persisted session")
    with open_ws(server, f"{facility}?subscribe-user&publish-broadcast", cookie) as ws:
        assert ws.recv(timeout=TIMEOUT) == "persisted user"
        wait_subscribed(redis_client, f"user:john:{facility}")
        redis_client.publish(f"user:john:{facility}", "live")
        assert ws.recv(timeout=TIMEOUT) == "live"
    with open_ws(server, f"{facility}?subscribe-broadcast&subscribe-user") as anonymous:
        assert anonymous.recv(timeout=TIMEOUT) == "persisted broadcast"
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "live")
        assert anonymous.recv(timeout=TIMEOUT) == "live"


def test_persisted_binary_message_is_replayed_as_binary(server, redis_client):
    facility = unique("replay-binary")
    redis_client.set(f"broadcast:{facility}", b"\xff\xfe\x00persisted")
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        assert ws.recv(timeout=TIMEOUT) == b"\xff\xfe\x00persisted"


# -- frames to the client: text or binary (§R6) -------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff\xfe\x00binary", b"\xff\xfe\x00binary"),
        (b"\xc3\x28 invalid utf-8", b"\xc3\x28 invalid utf-8"),
        (bytes(range(256)), bytes(range(256))),
        ("h\u00e9llo \u2603 \U0001f600", "h\u00e9llo \u2603 \U0001f600"),
        (b"plain ascii bytes", "plain ascii bytes"),
    ],
    ids=["non-utf8", "invalid-utf8-sequence", "all-bytes", "utf8-text", "ascii-bytes"],
)
def test_non_utf8_arrives_as_binary_frame_utf8_as_text(server, redis_client, payload, expected):
    facility = unique("frames")
    channel = f"broadcast:{facility}"
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, channel)
        redis_client.publish(channel, payload)
        received = ws.recv(timeout=TIMEOUT)
        assert type(received) is type(expected)
        assert received == expected
        redis_client.publish(channel, "still open")  # no 1007: the client accepted the frame
        assert ws.recv(timeout=TIMEOUT) == "still open"


# -- frames from the client ---------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (bytes(range(256)), bytes(range(256))),
        (b"\xff\xfe\x00", b"\xff\xfe\x00"),
        (b"ascii in a binary frame", b"ascii in a binary frame"),
        ("h\u00e9llo \u2603", "h\u00e9llo \u2603".encode("utf-8")),
    ],
    ids=["binary-all-bytes", "binary-non-utf8", "binary-ascii", "text-utf8"],
)
def test_client_frames_are_published_byte_for_byte(server, redis_server, frame, expected):
    facility = unique("client-frames")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send(frame)
        assert published.next() == (f"broadcast:{facility}", expected)


def test_binary_frame_round_trip_between_sockets(server, redis_client):
    facility = unique("binary-rt")
    with (
        open_ws(server, f"{facility}?publish-broadcast") as sender,
        open_ws(server, f"{facility}?subscribe-broadcast") as receiver,
    ):
        wait_subscribed(redis_client, f"broadcast:{facility}")
        sender.send(b"\x00\x01\xfe\xff")
        assert receiver.recv(timeout=TIMEOUT) == b"\x00\x01\xfe\xff"


@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        (["part1", "part2", "part3"], b"part1part2part3"),
        ([b"\x00\xff", b"\x80", b"tail"], b"\x00\xff\x80tail"),
        (["h\u00e9", "llo"], "h\u00e9llo".encode("utf-8")),
    ],
    ids=["text", "binary", "utf8-text"],
)
def test_fragmented_message_is_published_once_whole(server, redis_server, fragments, expected):
    """§R13: uWSGI published a spurious b'\\x00' per fragment before the message."""
    facility = unique("fragments")
    channel = f"broadcast:{facility}"
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send(fragments)
        round_trip(ws)
        ws.send("end")
        assert published.until(b"end") == [(channel, expected), (channel, b"end")]


def test_messages_of_one_socket_are_published_in_order(server, redis_server):
    facility = unique("order")
    messages = [f"message {number}" for number in range(100)]
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        for message in messages:
            ws.send(message)
        seen = published.until(messages[-1].encode())
    assert [payload.decode() for _, payload in seen] == messages


def test_empty_client_message_is_not_published(server, redis_server):
    facility = unique("empty")
    channel = f"broadcast:{facility}"
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send("")
        ws.send(b"")
        round_trip(ws)
        ws.send("end")
        assert published.until(b"end") == [(channel, b"end")]
