"""The ws4redis.v2 subprotocol end to end (issue 12): subscriptions made and
dropped at run time over one socket, publish ops, authorization and limits,
history ids and recovery after a reconnect (on the same node and on another),
beside plain ws4redis sockets and a foreign publisher on the same channels.

Every test uses its own facilities. Absence is proved by ordering: messages
of one server reach a socket in the order Redis delivered them, so a marker
published after a message that must not arrive, arriving first, proves that
it did not.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import re
import threading
import time
from typing import Self

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import TwistdServer, http_post_json, login, open_ws, recording, unique, wait_subscribed, warm_up
from twisted_ws4redis import history

TIMEOUT = 5
V2 = "ws4redis.v2"
ID = re.compile(r"\d+-\d+")

#: Allowed channels by facility (hooks.facility_allowed_channels), a small cap.
LIMITS = {"WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.facility_allowed_channels", "WS4REDIS_MAX_SUBSCRIPTIONS": 3}
#: History long enough for test_publications_during_the_replay; persisted messages.
HISTORY = {"WS4REDIS_HISTORY_SIZE": 3000, "WS4REDIS_EXPIRE": 60}
#: History that a few messages overflow.
SHORT_HISTORY = {"WS4REDIS_HISTORY_SIZE": 3, "WS4REDIS_EXPIRE": 60}
#: As test_liveness and test_hostile have them (the same servers in a full run).
HEARTBEAT = "--heartbeat--"
HEARTBEATING = {"WS4REDIS_HEARTBEAT": HEARTBEAT}
RATE = {"WS4REDIS_MAX_PUBLISH_RATE": 5}


# -- helpers -------------------------------------------------------------------------


class Client:
    """A ws4redis.v2 socket: ops out, replies in. The ``message`` ops read while
    waiting for a reply are kept, in order, for ``message()``."""

    def __init__(self, ws):
        self.ws = ws
        self.inbox: collections.deque[dict] = collections.deque()
        self._refs = itertools.count()

    def __enter__(self) -> Self:
        self.ws.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()

    def send(self, **op) -> None:
        self.ws.send(json.dumps(op))

    def recv(self, timeout: float = TIMEOUT) -> dict:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, str), f"v2 frames are JSON text, got {frame!r}"
        return json.loads(frame)

    def reply(self, ref) -> dict:
        """The next frame that is not a ``message``; it must answer ``ref``."""
        while True:
            frame = self.recv()
            if frame.get("op") != "message":
                assert frame.get("ref") == ref, f"expected the reply to ref {ref!r}, got {frame}"
                return frame
            self.inbox.append(frame)

    def call(self, op: str, **fields) -> dict:
        ref = f"ref-{next(self._refs)}"
        self.send(op=op, ref=ref, **fields)
        return self.reply(ref)

    def message(self, timeout: float = TIMEOUT) -> dict:
        frame = self.inbox.popleft() if self.inbox else self.recv(timeout)
        assert frame.get("op") == "message", f"expected a message op, got {frame}"
        return frame

    def subscribe(self, facility: str, audience: str = "broadcast", **fields) -> dict:
        reply = self.call("subscribe", facility=facility, audience=audience, **fields)
        assert reply["op"] == "subscribed", reply
        assert (reply["facility"], reply["audience"]) == (facility, audience), reply
        return reply

    def unsubscribe(self, facility: str, audience: str = "broadcast") -> None:
        reply = self.call("unsubscribe", facility=facility, audience=audience)
        assert reply == {"op": "unsubscribed", "facility": facility, "audience": audience, "ref": reply["ref"]}, reply

    def publish(self, facility: str, data: str, audience: str = "broadcast") -> str | None:
        """Publishes; the id the server answers with."""
        reply = self.call("publish", facility=facility, audience=audience, data=data)
        assert reply["op"] == "published", reply
        assert set(reply) == {"op", "ref", "id"}, reply
        return reply["id"]


def open_v2(server: TwistdServer, path: str = "", cookie: str | None = None, headers: dict | None = None) -> Client:
    """A client offering ws4redis.v2 on WEBSOCKET_URL + ``path``."""
    headers = {**({"Cookie": cookie} if cookie else {}), **(headers or {})}
    ws = connect(server.ws_url(path), subprotocols=[V2], additional_headers=headers or None, open_timeout=TIMEOUT)
    assert ws.subprotocol == V2
    return Client(ws)


def message(facility: str, data: str, id: str | None, audience: str = "broadcast") -> dict:
    return {"op": "message", "facility": facility, "audience": audience, "id": id, "data": data}


def id_key(value: str) -> tuple[int, int]:
    """Ids compare as numbers (``<ms>-<seq>``), not as strings."""
    assert isinstance(value, str), f"not a message id: {value!r}"
    assert ID.fullmatch(value), f"not a message id: {value!r}"
    ms, seq = value.split("-")
    return int(ms), int(seq)


def assert_increasing(ids: list) -> None:
    keys = [id_key(value) for value in ids]
    assert keys == sorted(set(keys)), f"ids not strictly increasing: {ids}"


def subscribers(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)


def wait_unsubscribed(client: redis.Redis, channel: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while subscribers(client, channel):
        assert time.monotonic() < deadline, f"{channel!r} still has a subscriber after {TIMEOUT}s"
        time.sleep(0.01)


def publish_view(server: TwistdServer, facility: str, text: str, **audience) -> dict:
    """RedisPublisher in the server's process (the ``publish/`` view)."""
    return http_post_json(
        server, "/publish/", {"facility": facility, "message": text, **(audience or {"broadcast": True})}
    )


def publish_in_process(facility: str, text: str, overrides: dict) -> None:
    """RedisPublisher in the tests' own process (needs ``django_in_process``),
    configured as the server it publishes to."""
    from django.test import override_settings

    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    with override_settings(**overrides):
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage(text))


# -- 1. the subprotocol --------------------------------------------------------------


@pytest.mark.parametrize("offer", [[V2], ["chat", V2]], ids=["alone", "second"])
def test_v2_is_selected_when_offered(server, offer):
    with connect(server.ws_url(""), subprotocols=offer, open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == V2


@pytest.mark.parametrize("offer", [None, ["chat"]], ids=["nothing", "other"])
def test_other_clients_keep_the_ws4redis_wire_beside_v2(server, redis_client, offer):
    facility = unique("v2-plain")
    with (
        open_v2(server) as v2,
        connect(server.ws_url(f"{facility}?subscribe-broadcast"), subprotocols=offer, open_timeout=TIMEOUT) as plain,
    ):
        assert plain.subprotocol == (offer[0] if offer else None)
        v2.subscribe(facility)
        wait_subscribed(redis_client, f"broadcast:{facility}")
        publish_view(server, facility, "raw text")
        assert plain.recv(timeout=TIMEOUT) == "raw text"
        assert v2.message() == message(facility, "raw text", None)


# -- 2. subscriptions at run time ------------------------------------------------------


def test_subscribe_and_unsubscribe_several_facilities_on_one_socket(server, redis_client):
    one, two = unique("v2-one"), unique("v2-two")
    with open_v2(server) as ws:
        for facility in (one, two):
            reply = ws.call("subscribe", facility=facility, audience="broadcast")
            assert reply == {"op": "subscribed", "facility": facility, "audience": "broadcast", "ref": reply["ref"]}
            wait_subscribed(redis_client, f"broadcast:{facility}")
        publish_view(server, one, "to one")
        assert redis_client.publish(f"broadcast:{two}", "to two") == 1
        assert ws.message() == message(one, "to one", None)
        assert ws.message() == message(two, "to two", None)

        ws.unsubscribe(one)
        wait_unsubscribed(redis_client, f"broadcast:{one}")
        publish_view(server, one, "one is gone")
        publish_view(server, two, "two still")
        assert ws.message() == message(two, "two still", None)
        ws.unsubscribe(one)  # idempotent
    wait_unsubscribed(redis_client, f"broadcast:{two}")  # closing releases the rest


def test_a_subscription_is_live_once_subscribed_is_answered(server, redis_client):
    """No waiting: what is published after ``subscribed`` arrives (a page's
    own publish right after subscribing, and recovery without a gap, rely on it)."""
    facility = unique("v2-live")
    with open_v2(server) as ws:
        ws.subscribe(facility)
        assert redis_client.publish(f"broadcast:{facility}", "at once") == 1
        assert ws.message() == message(facility, "at once", None)


def test_the_redis_subscription_stays_while_another_socket_of_the_process_listens(server, redis_client):
    facility = unique("v2-shared")
    channel = f"broadcast:{facility}"
    with open_v2(server) as first, open_v2(server) as second:
        first.subscribe(facility)
        second.subscribe(facility)
        wait_subscribed(redis_client, channel)
        first.unsubscribe(facility)
        assert redis_client.publish(channel, "for the second") == 1
        assert second.message() == message(facility, "for the second", None)
        # first's next frame answers its next op: it got nothing in between
        first.subscribe(unique("v2-other"))
        assert not first.inbox
        second.unsubscribe(facility)
        wait_unsubscribed(redis_client, channel)


def test_subscribing_a_pair_again_replaces_it(server, redis_client):
    facility = unique("v2-again")
    with open_v2(server) as ws:
        ws.subscribe(facility)
        ws.subscribe(facility)
        wait_subscribed(redis_client, f"broadcast:{facility}")
        for text in ("first", "second"):
            assert redis_client.publish(f"broadcast:{facility}", text) == 1
        assert [ws.message()["data"], ws.message()["data"]] == ["first", "second"]


# -- 3. the URL's subscriptions ------------------------------------------------------


def test_the_urls_flags_are_announced_and_delivered(server, redis_client):
    facility = unique("v2-url")
    with open_v2(server, f"{facility}?subscribe-broadcast") as ws:
        assert ws.recv() == {"op": "subscribed", "facility": facility, "audience": "broadcast", "ref": None}
        wait_subscribed(redis_client, f"broadcast:{facility}")
        publish_view(server, facility, "from the view")
        assert ws.message() == message(facility, "from the view", None)
        ws.unsubscribe(facility)
        wait_unsubscribed(redis_client, f"broadcast:{facility}")


def test_each_of_the_urls_flags_is_announced(server, redis_client):
    facility = unique("v2-url-user")
    with open_v2(server, f"{facility}?subscribe-broadcast&subscribe-user", login(server, "john")) as ws:
        announced = sorted((ws.recv(), ws.recv()), key=lambda op: op["audience"])
        assert announced == [
            {"op": "subscribed", "facility": facility, "audience": audience, "ref": None}
            for audience in ("broadcast", "user")
        ]
        wait_subscribed(redis_client, f"user:john:{facility}")
        publish_view(server, facility, "for john", users=["john"])
        assert ws.message() == message(facility, "for john", None, audience="user")


# -- 4. bad requests, authorization, limits ------------------------------------------


BAD_REQUESTS = {
    "malformed-json": ('{"op": "subscribe", "facility": ', None),
    "not-an-object": ('["subscribe"]', None),
    "a-number": ("42", None),
    "unknown-op": ({"op": "frobnicate", "ref": 7}, 7),
    "no-op": ({"facility": "f", "audience": "broadcast", "ref": "r"}, "r"),
    "facility-with-colon": ({"op": "subscribe", "facility": "a:b", "audience": "broadcast", "ref": [1]}, [1]),
    "facility-too-long": ({"op": "subscribe", "facility": "x" * 129, "audience": "broadcast", "ref": 1}, 1),
    "facility-not-a-string": ({"op": "subscribe", "facility": 42, "audience": "broadcast", "ref": 1}, 1),
    "facility-missing": ({"op": "subscribe", "audience": "broadcast", "ref": 1}, 1),
    "unknown-audience": ({"op": "subscribe", "facility": "f", "audience": "everybody", "ref": 1}, 1),
    "audience-missing": ({"op": "unsubscribe", "facility": "f", "ref": 1}, 1),
    "since-not-an-id": (
        {"op": "subscribe", "facility": "f", "audience": "broadcast", "since": "yesterday", "ref": 1},
        1,
    ),
    "since-a-number": ({"op": "subscribe", "facility": "f", "audience": "broadcast", "since": 12, "ref": 1}, 1),
    "data-missing": ({"op": "publish", "facility": "f", "audience": "broadcast", "ref": 1}, 1),
    "data-empty": ({"op": "publish", "facility": "f", "audience": "broadcast", "data": "", "ref": 1}, 1),
    "data-not-text": ({"op": "publish", "facility": "f", "audience": "broadcast", "data": {"a": 1}, "ref": 1}, 1),
    "data-b64-invalid": ({"op": "publish", "facility": "f", "audience": "broadcast", "data_b64": "!!", "ref": 1}, 1),
    "publish-bad-facility": ({"op": "publish", "facility": "a*", "audience": "broadcast", "data": "x", "ref": 1}, 1),
    "binary-frame": (b"\x00\x01 not text", None),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_bad_request_is_a_400_and_the_socket_stays_open(server, name):
    frame, ref = BAD_REQUESTS[name]
    facility = unique("v2-after-400")
    with open_v2(server) as ws:
        ws.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)
        error = ws.recv()
        assert {**error, "reason": None} == {"op": "error", "ref": ref, "code": 400, "reason": None}, error
        assert isinstance(error["reason"], str)
        assert error["reason"]
        ws.subscribe(facility)
        published = ws.publish(facility, "still open")
        assert ws.message() == message(facility, "still open", published)


def test_allowed_channels_refusing_a_facility_is_a_403(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)
    denied, allowed = unique("denied-v2"), unique("v2-allowed")
    with open_v2(server) as ws:
        for op, fields in (("subscribe", {}), ("publish", {"data": "no"})):
            error = ws.call(op, facility=denied, audience="broadcast", **fields)
            assert (error["op"], error["code"]) == ("error", 403), error
        ws.subscribe(allowed)
        published = ws.publish(allowed, "yes")
        assert ws.message() == message(allowed, "yes", published)


def test_allowed_channels_is_asked_about_the_one_flag(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)
    facility = unique("nouser-v2")
    with open_v2(server, cookie=login(server, "john")) as ws:
        error = ws.call("subscribe", facility=facility, audience="user")
        assert (error["op"], error["code"]) == ("error", 403), error
        ws.subscribe(facility, "broadcast")


def test_a_dropped_publish_flag_is_a_403_and_publishes_nothing(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)
    facility = unique("v2-readonly")
    with open_v2(server, headers={"Read-Only": "YES"}) as reader, open_v2(server) as writer:
        reader.subscribe(facility)
        error = reader.call("publish", facility=facility, audience="broadcast", data="forbidden")
        assert (error["op"], error["code"]) == ("error", 403), error
        marker = writer.publish(facility, "marker")
        assert reader.message() == message(facility, "marker", marker)


def test_user_audience(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)
    facility = unique("v2-user")
    with open_v2(server, cookie=login(server, "john")) as john, open_v2(server) as anonymous:
        john.subscribe(facility, "user")
        anonymous.subscribe(facility, "user")  # an empty audience: subscribed, hears nothing
        anonymous.subscribe(facility, "broadcast")
        wait_subscribed(redis_client, f"user:john:{facility}")
        publish_view(server, facility, "for mary", users=["mary"])
        publish_view(server, facility, "for john", users=["john"])
        assert john.message() == message(facility, "for john", None, audience="user")
        publish_view(server, facility, "for everybody")
        assert anonymous.message() == message(facility, "for everybody", None)


def test_group_audience_is_one_message_per_group(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)
    facility = unique("v2-group")
    with open_v2(server, cookie=login(server, "mary")) as mary:
        mary.subscribe(facility, "group")
        wait_subscribed(redis_client, f"group:chatusers:{facility}")
        wait_subscribed(redis_client, f"group:staff:{facility}")
        publish_view(server, facility, "to both groups", groups=["chatusers", "staff"])
        assert [mary.message(), mary.message()] == [message(facility, "to both groups", None, "group")] * 2


def test_past_max_subscriptions_is_a_429_counting_the_urls(twistd_servers, redis_client):
    server = twistd_servers(LIMITS)  # WS4REDIS_MAX_SUBSCRIPTIONS = 3
    in_url, third, fourth = unique("v2-cap-url"), unique("v2-cap-3"), unique("v2-cap-4")
    with open_v2(server, f"{in_url}?subscribe-broadcast&subscribe-user", login(server, "john")) as ws:
        assert {ws.recv()["audience"], ws.recv()["audience"]} == {"broadcast", "user"}
        ws.subscribe(third)
        error = ws.call("subscribe", facility=fourth, audience="broadcast")
        assert (error["op"], error["code"]) == ("error", 429), error
        ws.subscribe(third)  # a pair held again replaces itself: no new one
        ws.unsubscribe(in_url, "user")
        ws.subscribe(fourth)
        published = ws.publish(fourth, "counted")
        assert ws.message() == message(fourth, "counted", published)


# -- 5. publish ----------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [None, HISTORY], ids=["history-off", "history-on"])
def test_publish_reaches_v2_and_plain_sockets_and_the_publisher(twistd_servers, redis_client, overrides):
    server = twistd_servers(overrides)
    facility = unique("v2-publish")
    with (
        open_v2(server) as publisher,
        open_v2(server) as other,
        open_ws(server, f"{facility}?subscribe-broadcast") as plain,
    ):
        wait_subscribed(redis_client, f"broadcast:{facility}")
        publisher.subscribe(facility)
        other.subscribe(facility)
        ref = {"any": ["json", 1]}
        publisher.send(op="publish", facility=facility, audience="broadcast", data="hello", ref=ref)
        reply = publisher.reply(ref)
        assert reply == {"op": "published", "ref": ref, "id": reply["id"]}
        if overrides:
            id_key(reply["id"])
        else:
            assert reply["id"] is None
        assert publisher.message() == message(facility, "hello", reply["id"])
        assert other.message() == message(facility, "hello", reply["id"])
        assert plain.recv(timeout=TIMEOUT) == "hello"


def test_a_request_without_ref_is_answered_with_ref_null(server, redis_client):
    facility = unique("v2-noref")
    with open_v2(server) as ws:
        ws.send(op="subscribe", facility=facility, audience="broadcast")
        assert ws.reply(None)["op"] == "subscribed"
        ws.send(op="publish", facility=facility, audience="broadcast", data="no ref")
        assert ws.reply(None) == {"op": "published", "ref": None, "id": None}
        assert ws.message() == message(facility, "no ref", None)


def test_replies_come_in_the_order_of_the_ops(server, redis_client):
    """Ops sent at once, without waiting: each is handled after the one before
    is done, whether it waits (Django, Redis) or not (an unsubscribe, an error)."""
    facility = unique("v2-order")
    with open_v2(server) as ws:
        ws.subscribe(facility)
        ops = [
            {"op": "publish", "facility": facility, "audience": "broadcast", "data": "first", "ref": "p1"},
            {"op": "unsubscribe", "facility": unique("v2-none"), "audience": "broadcast", "ref": "u1"},
            {"op": "publish", "facility": facility, "audience": "broadcast", "data": "again", "ref": "p2"},
            {"op": "frobnicate", "ref": "e1"},
            {"op": "publish", "facility": facility, "audience": "broadcast", "data": "last", "ref": "p3"},
            {"op": "unsubscribe", "facility": unique("v2-none"), "audience": "broadcast", "ref": "u2"},
        ]
        for op in ops:
            ws.send(**op)
        replies = [ws.reply(op["ref"]) for op in ops]
        assert [reply["op"] for reply in replies] == [
            "published",
            "unsubscribed",
            "published",
            "error",
            "published",
            "unsubscribed",
        ]
        # Messages travel apart from replies: the last may come after every reply.
        assert [ws.message()["data"] for _ in range(3)] == ["first", "again", "last"]


def test_binary_payloads_travel_as_data_b64(server, redis_client):
    facility = unique("v2-b64")
    payload = b"\xff\xfe\x00binary"
    encoded = base64.b64encode(payload).decode()
    with open_v2(server) as ws, open_ws(server, f"{facility}?subscribe-broadcast") as plain:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        ws.subscribe(facility)
        reply = ws.call("publish", facility=facility, audience="broadcast", data_b64=encoded)
        assert reply["op"] == "published", reply
        assert ws.message() == {
            "op": "message",
            "facility": facility,
            "audience": "broadcast",
            "id": None,
            "data_b64": encoded,
        }
        assert plain.recv(timeout=TIMEOUT) == payload


def test_publishing_past_the_rate_closes_with_1008(twistd_servers, redis_server, redis_client):
    server = twistd_servers(RATE)
    facility = unique("v2-rate")
    with recording(redis_server, facility) as recorder, open_v2(server) as ws:
        for n in range(20):
            ws.send(op="publish", facility=facility, audience="broadcast", data=str(n), ref=n)
        replies = []
        with pytest.raises(ConnectionClosed):
            while True:
                replies.append(ws.recv())
        assert ws.ws.close_code == 1008
        assert recorder.until(b"4") == [(f"broadcast:{facility}", str(n).encode()) for n in range(5)]
        assert replies == [{"op": "published", "ref": n, "id": None} for n in range(5)]


def test_heartbeats_stay_raw_text(twistd_servers, redis_client):
    server = twistd_servers(HEARTBEATING)
    facility = unique("v2-beat")
    with open_v2(server) as ws:
        assert ws.ws.recv(timeout=TIMEOUT) == HEARTBEAT  # the one at open
        ws.ws.send(HEARTBEAT)
        assert ws.ws.recv(timeout=TIMEOUT) == HEARTBEAT  # answered, not an error
        ws.subscribe(facility)
        published = ws.publish(facility, "after the beat")
        assert ws.message() == message(facility, "after the beat", published)


# -- 6-9. history and recovery ---------------------------------------------------------


def test_recovery_after_a_reconnect(twistd_servers, redis_client, django_in_process):
    server = twistd_servers(HISTORY)
    facility = unique("v2-recover")
    with open_v2(server) as a, open_v2(server) as b:
        a.subscribe(facility)
        ids = [b.publish(facility, f"m{n}") for n in (1, 2, 3)]
        assert [a.message() for _ in ids] == [
            message(facility, f"m{n}", i) for n, i in zip((1, 2, 3), ids, strict=True)
        ]
        assert_increasing(ids)
    # while A is away: another v2 socket, the server's Django side, another process' Django
    with open_v2(server) as b:
        missed = [b.publish(facility, "m4"), b.publish(facility, "m5")]
    publish_view(server, facility, "m6")
    publish_in_process(facility, "m7", HISTORY)
    with open_v2(server) as a, open_v2(server) as b:
        reply = a.subscribe(facility, since=ids[-1])
        assert reply["recovered"] is True, reply
        replayed = [a.message() for _ in range(4)]
        assert [m["data"] for m in replayed] == ["m4", "m5", "m6", "m7"]
        assert [m["id"] for m in replayed[:2]] == missed
        assert_increasing([ids[-1], *(m["id"] for m in replayed)])
        assert all(m == message(facility, m["data"], m["id"]) for m in replayed)
        live = b.publish(facility, "m8")
        assert a.message() == message(facility, "m8", live)


@pytest.mark.parametrize("away", [3, 4], ids=["exactly-the-size", "one-more"])
def test_recovery_needs_the_history_to_reach_back(twistd_servers, redis_client, away):
    server = twistd_servers(SHORT_HISTORY)  # 3 entries, persisted messages
    facility = unique("v2-trim")
    with open_v2(server) as a:
        a.subscribe(facility)
        since = a.publish(facility, "seen")
    with open_v2(server) as b:
        missed = [b.publish(facility, f"away{n}") for n in range(away)]
    with open_v2(server) as a, open_v2(server) as b:
        reply = a.subscribe(facility, since=since)
        if away <= 3:
            assert reply["recovered"] is True, reply
            assert [a.message() for _ in missed] == [message(facility, f"away{n}", i) for n, i in enumerate(missed)]
        else:
            assert reply["recovered"] is False, reply
            # the persisted message, with its id: it is the stream's last entry
            assert a.message() == message(facility, f"away{away - 1}", missed[-1])
        live = b.publish(facility, "live")
        assert a.message() == message(facility, "live", live)


def test_since_older_than_the_stream_is_not_recovered(twistd_servers, redis_client):
    server = twistd_servers(SHORT_HISTORY)
    facility = unique("v2-old-since")
    with open_v2(server) as ws:
        last = ws.publish(facility, "kept")
        reply = ws.subscribe(facility, since="1-0")
        assert reply["recovered"] is False, reply
        assert ws.message() == message(facility, "kept", last)


@pytest.mark.parametrize("since", ["0-0", "18446744073709551615-18446744073709551615"], ids=["least", "greatest"])
def test_since_at_either_end_of_the_ids_is_a_subscription(twistd_servers, redis_client, since):
    server = twistd_servers(SHORT_HISTORY)
    facility = unique("v2-since-edge")
    with open_v2(server) as ws:
        ws.publish(facility, "kept")
        reply = ws.call("subscribe", facility=facility, audience="broadcast", since=since)
        assert reply["op"] == "subscribed", reply
        assert isinstance(reply["recovered"], bool), reply
        if not reply["recovered"]:
            assert ws.message()["data"] == "kept"  # the persisted message
        published = ws.publish(facility, "live")
        assert ws.message() == message(facility, "live", published)


def test_without_since_the_persisted_message_comes_first(twistd_servers, redis_client):
    server = twistd_servers(SHORT_HISTORY)
    facility = unique("v2-persisted")
    with open_v2(server) as ws:
        ws.publish(facility, "older")
        last = ws.publish(facility, "kept")
        reply = ws.subscribe(facility)
        assert "recovered" not in reply, reply
        assert ws.message() == message(facility, "kept", last)


def test_since_with_history_off_is_not_recovered(server, redis_client):
    facility = unique("v2-no-history")
    with open_v2(server) as ws:
        assert ws.subscribe(facility, since="1-0")["recovered"] is False
        published = ws.publish(facility, "live")
        assert ws.message() == message(facility, "live", published)


def test_recovery_on_another_node(twistd_servers, redis_server, test_db, redis_client):
    first = twistd_servers(HISTORY)
    second = TwistdServer(redis_server.url, test_db, HISTORY)
    try:
        warm_up(second)
        facility = unique("v2-nodes")
        with open_v2(first) as a:
            a.subscribe(facility)
            since = a.publish(facility, "before")
        with open_v2(first) as b:
            missed = [b.publish(facility, f"away{n}") for n in range(3)]
        with open_v2(second) as a, open_v2(first) as b:
            assert a.subscribe(facility, since=since)["recovered"] is True
            assert [a.message() for _ in missed] == [message(facility, f"away{n}", i) for n, i in enumerate(missed)]
            live = b.publish(facility, "live")
            assert a.message() == message(facility, "live", live)
    finally:
        second.stop()


def test_publications_during_the_replay_are_neither_lost_nor_doubled(twistd_servers, redis_server, redis_client):
    """2000 numbered messages published through the history's script in a
    tight loop (batches of 20 pipelined, as fast as Redis takes them); five
    clients, one after another, each subscribe while the loop runs, since the
    100th message before. Each must get every later number once, in order."""
    server = twistd_servers(HISTORY)
    facility = unique("v2-race")
    channel = f"broadcast:{facility}"
    total, batch, back = 2000, 20, 100
    milestones = [200 + n * 300 for n in range(5)]
    ready, go = [threading.Event() for _ in milestones], [threading.Event() for _ in milestones]
    ids: list[str] = []  # ids[n - 1]: message n's
    failures: list[BaseException] = []

    def publish_all() -> None:
        publisher = redis_server.client()
        try:
            sha = publisher.script_load(history.PUBLISH_SCRIPT)
            for first in range(1, total + 1, batch):
                pipe = publisher.pipeline(transaction=False)
                for n in range(first, first + batch):
                    pipe.evalsha(
                        sha,
                        3,
                        *history.publish_keys(channel, ""),
                        *history.publish_args(
                            str(n).encode(), HISTORY["WS4REDIS_EXPIRE"], HISTORY["WS4REDIS_HISTORY_SIZE"], 3600
                        ),
                    )
                ids.extend(reply[1].decode() for reply in pipe.execute())
                if len(ids) in milestones:
                    k = milestones.index(len(ids))
                    ready[k].set()
                    assert go[k].wait(30), "the test did not subscribe"
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
            for event in ready:
                event.set()
        finally:
            publisher.close()

    thread = threading.Thread(target=publish_all)
    thread.start()
    sockets = []
    try:
        for k, milestone in enumerate(milestones):
            assert ready[k].wait(30), failures
            assert not failures, failures
            sockets.append(open_v2(server).__enter__())
            sockets[-1].send(
                op="subscribe", facility=facility, audience="broadcast", since=ids[milestone - back - 1], ref="race"
            )
            go[k].set()
        for ws, milestone in zip(sockets, milestones, strict=True):
            reply = ws.reply("race")
            assert reply.get("recovered") is True, reply
            expected = list(range(milestone - back + 1, total + 1))
            received = [ws.message() for _ in expected]
            numbers = [int(m["data"]) for m in received]
            assert numbers == expected, [(i, n) for i, n in zip(expected, numbers, strict=False) if i != n][:20]
            assert [m["id"] for m in received] == ids[milestone - back :]
    finally:
        for event in go:
            event.set()
        thread.join()
        for ws in sockets:
            ws.__exit__()
    assert not failures, failures


# -- 10. a foreign publisher -----------------------------------------------------------


def test_a_plain_publish_reaches_plain_sockets_raw_and_v2_without_id(twistd_servers, redis_client):
    server = twistd_servers(HISTORY)
    facility = unique("v2-foreign")
    channel = f"broadcast:{facility}"
    with open_v2(server) as ws, open_ws(server, f"{facility}?subscribe-broadcast") as plain:
        wait_subscribed(redis_client, channel)
        ws.subscribe(facility)
        assert redis_client.publish(channel, "from ws4redis 0.6") == 1
        assert plain.recv(timeout=TIMEOUT) == "from ws4redis 0.6"
        assert ws.message() == message(facility, "from ws4redis 0.6", None)
        ours = ws.publish(facility, "ours")
        id_key(ours)
        assert ws.message() == message(facility, "ours", ours)
        assert plain.recv(timeout=TIMEOUT) == "ours"
