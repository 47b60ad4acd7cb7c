"""Who hears what: subscribe/publish flags, their parsing, channel names (prefix,
facility), SELF resolution, anonymous users and requests without a session.

Every test uses its own facility, so servers shared by the session and channels
still being unsubscribed from earlier tests never interfere. Absence is proved
by ordering, not by sleeping: the server has ONE Redis subscriber connection, so
a later socket's SUBSCRIBE being live (``barrier``) means every earlier SUBSCRIBE
was processed too; and messages on one path arrive in order, so a marker that
arrives first proves that nothing was queued before it.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from conftest import http_post_json, login, open_ws, recording, round_trip, session_key, unique, wait_subscribed

TIMEOUT = 5


# -- helpers -------------------------------------------------------------------------


def barrier(server, client: redis.Redis) -> None:
    """Returns once every SUBSCRIBE the server issued before now has been processed
    by Redis (they all travel on the server's one subscriber connection)."""
    facility = unique("barrier")
    with open_ws(server, f"{facility}?subscribe-broadcast"):
        wait_subscribed(client, f"broadcast:{facility}")


def channels_of(client: redis.Redis, facility: str) -> list[str]:
    """Every channel with a subscriber whose name ends with ``:<facility>``."""
    return sorted(name.decode() for name in client.pubsub_channels(f"*:{facility}"))


def publish_until_received(client: redis.Redis, channel: str, message, subscribers: int = 1) -> None:
    """PUBLISH once the channel has ``subscribers`` subscribers (exactly one delivery);
    a test that also records the channel itself counts its recorder too."""
    wait_subscribed(client, channel, count=subscribers)
    assert client.publish(channel, message) >= subscribers


# -- subscribe-broadcast -------------------------------------------------------------


def test_subscribe_broadcast(server, redis_client):
    facility = unique("sub-bc")
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        publish_until_received(redis_client, f"broadcast:{facility}", "to everybody")
        assert ws.recv(timeout=TIMEOUT) == "to everybody"
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]


def test_broadcast_reaches_every_subscriber_of_the_facility_only(server, redis_client):
    facility, other = unique("sub-bc-many"), unique("sub-bc-other")
    with (
        open_ws(server, f"{facility}?subscribe-broadcast") as first,
        open_ws(server, f"{facility}?subscribe-broadcast") as second,
        open_ws(server, f"{other}?subscribe-broadcast") as elsewhere,
    ):
        publish_until_received(redis_client, f"broadcast:{facility}", "hello")
        assert first.recv(timeout=TIMEOUT) == "hello"
        assert second.recv(timeout=TIMEOUT) == "hello"
        publish_until_received(redis_client, f"broadcast:{other}", "marker")
        assert elsewhere.recv(timeout=TIMEOUT) == "marker"


# -- subscribe-user ------------------------------------------------------------------


def test_subscribe_user_logged_in(server, redis_client):
    facility = unique("sub-user")
    cookie = login(server, "john")
    with open_ws(server, f"{facility}?subscribe-user", cookie) as ws:
        publish_until_received(redis_client, f"user:john:{facility}", "for john")
        assert ws.recv(timeout=TIMEOUT) == "for john"
        assert channels_of(redis_client, facility) == [f"user:john:{facility}"]
        # another user's channel of the same facility is not john's
        assert redis_client.publish(f"user:mary:{facility}", "for mary") == 0


@pytest.mark.parametrize("cookie", [None, "sessionid=thereisnosuchsession"], ids=["no-cookie", "unknown-session"])
def test_anonymous_gets_no_user_or_group_channel(server, redis_client, cookie):
    """§R4: ws4redis subscribed anonymous users to user:<SELF_TYPE object at 0x…>:…"""
    facility = unique("sub-anon")
    with open_ws(server, f"{facility}?subscribe-user&subscribe-group&subscribe-broadcast", cookie) as ws:
        publish_until_received(redis_client, f"broadcast:{facility}", "still works")
        assert ws.recv(timeout=TIMEOUT) == "still works"
        barrier(server, redis_client)
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]
        bogus = [
            name
            for name in redis_client.pubsub_channels("*")
            if b"SELF" in name or b"object at" in name or b"None" in name or b"AnonymousUser" in name
        ]
        assert bogus == []


# -- subscribe-group -----------------------------------------------------------------


def test_subscribe_group_john(server, redis_client):
    facility = unique("sub-group")
    cookie = login(server, "john")
    with open_ws(server, f"{facility}?subscribe-group", cookie) as ws:
        publish_until_received(redis_client, f"group:chatusers:{facility}", "for chatusers")
        assert ws.recv(timeout=TIMEOUT) == "for chatusers"
        assert channels_of(redis_client, facility) == [f"group:chatusers:{facility}"]


def test_subscribe_group_without_groups_gets_nothing(server, redis_client):
    facility = unique("sub-group-ann")
    cookie = login(server, "ann")
    with open_ws(server, f"{facility}?subscribe-group&subscribe-broadcast", cookie) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        barrier(server, redis_client)
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]
        assert redis_client.publish(f"group:chatusers:{facility}", "not for ann") == 0
        assert redis_client.publish(f"group:staff:{facility}", "not for ann") == 0
        redis_client.publish(f"broadcast:{facility}", "marker")
        assert ws.recv(timeout=TIMEOUT) == "marker"


def test_subscribe_group_mary_gets_both_groups(server, redis_client):
    facility = unique("sub-group-mary")
    cookie = login(server, "mary")
    with open_ws(server, f"{facility}?subscribe-group", cookie) as ws:
        publish_until_received(redis_client, f"group:chatusers:{facility}", "for chatusers")
        publish_until_received(redis_client, f"group:staff:{facility}", "for staff")
        assert [ws.recv(timeout=TIMEOUT), ws.recv(timeout=TIMEOUT)] == ["for chatusers", "for staff"]
        assert channels_of(redis_client, facility) == [f"group:chatusers:{facility}", f"group:staff:{facility}"]


# -- subscribe-session ---------------------------------------------------------------


def test_subscribe_session(server, redis_client):
    facility = unique("sub-session")
    cookie = login(server, "john")
    channel = f"session:{session_key(cookie)}:{facility}"
    with open_ws(server, f"{facility}?subscribe-session", cookie) as ws:
        publish_until_received(redis_client, channel, "for this session")
        assert ws.recv(timeout=TIMEOUT) == "for this session"
        assert channels_of(redis_client, facility) == [channel]


def test_other_session_of_same_user_is_another_channel(server, redis_client):
    facility = unique("sub-session-two")
    first, second = login(server, "john"), login(server, "john")
    assert session_key(first) != session_key(second)
    with open_ws(server, f"{facility}?subscribe-session", first) as ws:
        publish_until_received(redis_client, f"session:{session_key(first)}:{facility}", "first")
        assert ws.recv(timeout=TIMEOUT) == "first"
        assert redis_client.publish(f"session:{session_key(second)}:{facility}", "second") == 0


def test_session_flags_without_cookie_no_channel_and_socket_works(server, redis_server, redis_client):
    """§R5: ws4redis crashed after the 101 (AttributeError) and the socket was dead."""
    facility = unique("session-nocookie")
    flags = "subscribe-session&publish-session&subscribe-broadcast&publish-broadcast&echo"
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?{flags}") as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        barrier(server, redis_client)
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"  # echo through broadcast
        assert published.next() == (f"broadcast:{facility}", b"hello")
        ws.send("end")
        assert published.next() == (f"broadcast:{facility}", b"end")
    assert "Traceback" not in server.log()


# -- publish flags -------------------------------------------------------------------


def test_publish_broadcast(server, redis_server):
    facility = unique("pub-bc")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-broadcast") as ws:
        ws.send("from the socket")
        assert published.next() == (f"broadcast:{facility}", b"from the socket")


def test_publish_user(server, redis_server):
    facility = unique("pub-user")
    cookie = login(server, "john")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-user", cookie) as ws:
        ws.send("from john")
        assert published.next() == (f"user:john:{facility}", b"from john")


def test_publish_group(server, redis_server):
    facility = unique("pub-group")
    cookie = login(server, "mary")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-group", cookie) as ws:
        ws.send("from mary")
        got = {published.next(), published.next()}
    assert got == {(f"group:chatusers:{facility}", b"from mary"), (f"group:staff:{facility}", b"from mary")}


def test_publish_session(server, redis_server):
    facility = unique("pub-session")
    cookie = login(server, "john")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?publish-session", cookie) as ws:
        ws.send("from this session")
        assert published.next() == (f"session:{session_key(cookie)}:{facility}", b"from this session")


def test_publish_every_audience_in_ws4redis_order(server, redis_server):
    """Channel order of ws4redis: broadcast, groups, users, sessions."""
    facility = unique("pub-all")
    cookie = login(server, "john")
    flags = "publish-session&publish-user&publish-group&publish-broadcast"
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?{flags}", cookie) as ws:
        ws.send("to all of john")
        got = [published.next() for _ in range(4)]
    assert got == [
        (channel, b"to all of john")
        for channel in (
            f"broadcast:{facility}",
            f"group:chatusers:{facility}",
            f"user:john:{facility}",
            f"session:{session_key(cookie)}:{facility}",
        )
    ]


def test_anonymous_publish_user_group_session_publishes_nowhere(server, redis_server, redis_client):
    """§R4/§R5: ws4redis published anonymous messages to a bogus user name (or crashed)."""
    facility = unique("pub-anon")
    flags = "publish-user&publish-group&publish-session&publish-broadcast"
    with recording(redis_server, "*", pattern=None) as everything, open_ws(server, f"{facility}?{flags}") as ws:
        ws.send("anonymous")
        round_trip(ws)  # the server has handled the message (and published it, if at all)
        ws.send("end")
        seen = [entry for entry in everything.until(b"end") if facility in entry[0]]
    assert seen == [(f"broadcast:{facility}", b"anonymous"), (f"broadcast:{facility}", b"end")]
    assert redis_client.keys(f"*{facility}*") == []


def test_anonymous_publish_user_alone_publishes_nothing(server, redis_server):
    facility = unique("pub-anon-user")
    with (
        recording(redis_server, "*") as everything,
        open_ws(server, f"{facility}?publish-user") as anonymous,
        open_ws(server, f"{facility}?publish-broadcast") as witness,
    ):
        anonymous.send("anonymous")
        round_trip(anonymous)  # the server has handled the message (and published it, if at all)
        witness.send("end")
        seen = [entry for entry in everything.until(b"end") if facility in entry[0]]
    assert seen == [(f"broadcast:{facility}", b"end")]


# -- flag parsing (spec §4) ----------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SUBSCRIBE-BROADCAST=1&Publish-Broadcast=yes",
        "subscribe-broadcast=&publish-broadcast=0",
        "%20Subscribe-Broadcast%20&+PUBLISH-broadcast+",
        "%09subscribe-broadcast&publish-broadcast%20=x",
    ],
    ids=["values", "empty-and-zero-values", "case-and-spaces", "tab-and-space-before-value"],
)
def test_flags_are_keys_stripped_lowercased_values_ignored(server, redis_server, redis_client, query):
    facility = unique("flags")
    with recording(redis_server, facility) as published, open_ws(server, f"{facility}?{query}") as ws:
        publish_until_received(redis_client, f"broadcast:{facility}", "in")
        assert published.next() == (f"broadcast:{facility}", b"in")
        assert ws.recv(timeout=TIMEOUT) == "in"
        ws.send("out")
        assert published.next() == (f"broadcast:{facility}", b"out")
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]


def test_unknown_flags_are_ignored(server, redis_client):
    facility = unique("flags-unknown")
    query = "foo&subscribe-broadcast&bar=baz&subscribe-everything&subscribe-user-x&subscribe&publish"
    with open_ws(server, f"{facility}?{query}") as ws:
        publish_until_received(redis_client, f"broadcast:{facility}", "known flag works")
        assert ws.recv(timeout=TIMEOUT) == "known flag works"
        barrier(server, redis_client)
        assert channels_of(redis_client, facility) == [f"broadcast:{facility}"]


@pytest.mark.parametrize(
    "query",
    ["", "?", "?echo", "?foo=bar&subscribe_broadcast"],
    ids=["no-query", "empty-query", "only-echo", "only-unknown"],
)
def test_no_flag_socket_open_nothing_subscribed_nothing_published(server, redis_server, redis_client, query):
    facility = unique("flags-none")
    with (
        recording(redis_server, "*") as everything,
        open_ws(server, f"{facility}{query}") as ws,
        open_ws(server, f"{facility}?publish-broadcast") as witness,
    ):
        barrier(server, redis_client)
        assert channels_of(redis_client, facility) == []
        ws.send("goes nowhere")
        round_trip(ws)
        witness.send("end")
        seen = [entry for entry in everything.until(b"end") if facility in entry[0]]
        assert seen == [(f"broadcast:{facility}", b"end")]
        round_trip(ws)  # still open and answering
        assert channels_of(redis_client, facility) == []


# -- facility ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "facility"),
    [
        ("{u}%20b/c", "{u} b/c"),
        ("{u}/a%2Fb", "{u}/a/b"),
        ("caf%C3%A9-{u}", "café-{u}"),
        ("{u}/deep/er/path", "{u}/deep/er/path"),
    ],
    ids=["space-and-slash", "encoded-slash", "utf8", "many-slashes"],
)
def test_facility_is_the_decoded_path_after_websocket_url(server, redis_server, redis_client, path, facility):
    token = uuid.uuid4().hex[:10]
    path, facility = path.format(u=token), facility.format(u=token)
    channel = f"broadcast:{facility}"
    with (
        recording(redis_server, channel, pattern=channel) as published,
        open_ws(server, f"{path}?subscribe-broadcast&publish-broadcast") as ws,
    ):
        publish_until_received(redis_client, channel, "in", subscribers=2)
        assert published.next() == (channel, b"in")
        assert ws.recv(timeout=TIMEOUT) == "in"
        ws.send("out")
        assert published.next() == (channel, b"out")
        assert list(redis_client.pubsub_channels(f"*{token}*")) == [channel.encode()]


def test_empty_facility(server, redis_server, redis_client):
    channel = "broadcast:"
    with (
        recording(redis_server, channel, pattern=channel) as published,
        open_ws(server, "?subscribe-broadcast&publish-broadcast") as ws,
    ):
        publish_until_received(redis_client, channel, "empty facility in", subscribers=2)
        assert published.next() == (channel, b"empty facility in")
        assert ws.recv(timeout=TIMEOUT) == "empty facility in"
        ws.send("empty facility out")
        assert published.next() == (channel, b"empty facility out")


# -- WS4REDIS_PREFIX -----------------------------------------------------------------


@pytest.fixture
def prefixed(twistd_servers, redis_client):
    return twistd_servers({"WS4REDIS_PREFIX": "demo"})


def test_prefix_on_every_subscribed_channel(prefixed, redis_client):
    facility = unique("prefix-sub")
    cookie = login(prefixed, "john")
    key = session_key(cookie)
    flags = "subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session"
    expected = sorted(
        [
            f"demo:broadcast:{facility}",
            f"demo:user:john:{facility}",
            f"demo:group:chatusers:{facility}",
            f"demo:session:{key}:{facility}",
        ]
    )
    with open_ws(prefixed, f"{facility}?{flags}", cookie) as ws:
        for channel in expected:
            publish_until_received(redis_client, channel, f"via {channel}")
            assert ws.recv(timeout=TIMEOUT) == f"via {channel}"
        assert channels_of(redis_client, facility) == expected
        assert redis_client.publish(f"broadcast:{facility}", "unprefixed") == 0
        assert redis_client.publish(f"user:john:{facility}", "unprefixed") == 0


def test_prefix_on_every_published_channel(prefixed, redis_server):
    facility = unique("prefix-pub")
    cookie = login(prefixed, "john")
    flags = "publish-broadcast&publish-user&publish-group&publish-session"
    with recording(redis_server, facility) as published, open_ws(prefixed, f"{facility}?{flags}", cookie) as ws:
        ws.send("prefixed")
        got = {published.next() for _ in range(4)}
    assert got == {
        (channel, b"prefixed")
        for channel in (
            f"demo:broadcast:{facility}",
            f"demo:group:chatusers:{facility}",
            f"demo:user:john:{facility}",
            f"demo:session:{session_key(cookie)}:{facility}",
        )
    }


def test_prefix_in_the_django_publisher(prefixed, redis_client):
    facility = unique("prefix-view")
    with open_ws(prefixed, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, f"demo:broadcast:{facility}")
        reply = http_post_json(
            prefixed, "/publish/", {"facility": facility, "message": "from django", "broadcast": True}
        )
        assert reply["channels"] == [f"demo:broadcast:{facility}"]
        assert reply["received"] == 1
        assert ws.recv(timeout=TIMEOUT) == "from django"


# -- SELF through RedisPublisher in a Django view ------------------------------------


def test_self_user_with_cookie_reaches_own_user_socket(server, redis_client):
    facility = unique("self-user")
    cookie = login(server, "john")
    with open_ws(server, f"{facility}?subscribe-user", cookie) as ws:
        wait_subscribed(redis_client, f"user:john:{facility}")
        reply = http_post_json(
            server,
            "/publish/",
            {"facility": facility, "message": "to myself", "users": ["SELF"]},
            headers={"Cookie": cookie},
        )
        assert reply["channels"] == [f"user:john:{facility}"]
        assert reply["received"] == 1
        assert ws.recv(timeout=TIMEOUT) == "to myself"


def test_self_group_and_session_with_cookie(server, redis_client):
    facility = unique("self-group-session")
    cookie = login(server, "mary")
    session_channel = f"session:{session_key(cookie)}:{facility}"
    with open_ws(server, f"{facility}?subscribe-group&subscribe-session", cookie) as ws:
        for channel in (f"group:chatusers:{facility}", f"group:staff:{facility}", session_channel):
            wait_subscribed(redis_client, channel)
        reply = http_post_json(
            server,
            "/publish/",
            {"facility": facility, "message": "to my groups", "groups": ["SELF"]},
            headers={"Cookie": cookie},
        )
        assert sorted(reply["channels"]) == [f"group:chatusers:{facility}", f"group:staff:{facility}"]
        # one socket on both group channels: it gets the message once per channel
        assert [ws.recv(timeout=TIMEOUT), ws.recv(timeout=TIMEOUT)] == ["to my groups"] * 2
        reply = http_post_json(
            server,
            "/publish/",
            {"facility": facility, "message": "to my session", "sessions": ["SELF"]},
            headers={"Cookie": cookie},
        )
        assert reply["channels"] == [session_channel]
        assert ws.recv(timeout=TIMEOUT) == "to my session"


def test_self_without_cookie_resolves_to_nothing(server, redis_client):
    facility = unique("self-anon")
    reply = http_post_json(
        server,
        "/publish/",
        {"facility": facility, "message": "to nobody", "users": ["SELF"], "groups": ["SELF"], "sessions": ["SELF"]},
    )
    assert reply == {"channels": [], "received": 0}
