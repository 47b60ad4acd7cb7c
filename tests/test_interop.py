"""Interoperability with the real django-websocket-redis 0.6.0 (``ws4redis``,
installed by the test extra) on one Redis: the same channel and key names for
the same request, its publisher reaching our websockets, and persisted
messages read by either side."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from conftest import django_request, login, open_ws, session_key, unique, wait_subscribed

pytestmark = pytest.mark.usefixtures("django_in_process")
TIMEOUT = 5


@pytest.fixture
def reference(redis_client):
    """ws4redis' publisher and store, importable once Django is set up (its
    settings module reads WS4REDIS_CONNECTION at import: the test Redis)."""
    from ws4redis import publisher, redis_store

    return publisher, redis_store


@pytest.fixture
def ours():
    from twisted_ws4redis import publisher, redis_store

    return publisher, redis_store


AUDIENCES = [
    {"broadcast": True},
    {"users": ["john", "ann"]},
    {"groups": ["chatusers"]},
    {"sessions": ["abc123"]},
    {"users": "SELF", "groups": "SELF", "sessions": "SELF"},
    {"broadcast": True, "users": ["mary"], "groups": ["staff", "chatusers"], "sessions": ["k"]},
]


@pytest.mark.parametrize("audience", AUDIENCES, ids=[repr(a) for a in AUDIENCES])
@pytest.mark.parametrize("prefix", [None, "site"])
def test_the_same_request_gives_the_same_channel_names(reference, ours, monkeypatch, audience, prefix):
    from django.test import override_settings
    from ws4redis import settings as reference_settings

    request = django_request("mary")

    def names(store_module, publisher_module, self_marker):
        kwargs = {key: [self_marker] if value == "SELF" else value for key, value in audience.items()}
        store = store_module.RedisStore(publisher_module.RedisPublisher(facility="f")._connection)
        return sorted(store._get_message_channels(request=request, facility="chat", **kwargs))

    monkeypatch.setattr(reference_settings, "WS4REDIS_PREFIX", prefix)
    with override_settings(WS4REDIS_PREFIX=prefix):
        theirs = names(reference[1], reference[0], reference[1].SELF)
        mine = names(ours[1], ours[0], ours[1].SELF)
    assert theirs
    assert mine == theirs


def test_the_reference_publisher_reaches_our_websockets(reference, server, redis_client):
    """ws4redis' RedisPublisher in a Django process, our server holding the sockets."""
    publisher = reference[0]
    message = reference[1].RedisMessage
    facility = unique("interop")
    cookie = login(server, "john")
    key = session_key(cookie)
    with open_ws(
        server, f"{facility}?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session", cookie
    ) as ws:
        for channel in (
            f"broadcast:{facility}",
            f"user:john:{facility}",
            f"group:chatusers:{facility}",
            f"session:{key}:{facility}",
        ):
            wait_subscribed(redis_client, channel)
        sent = []
        for audience in ({"broadcast": True}, {"users": ["john"]}, {"groups": ["chatusers"]}, {"sessions": [key]}):
            text = f"via ws4redis to {audience}"
            publisher.RedisPublisher(facility=facility, **audience).publish_message(message(text), expire=0)
            sent.append(text)
        assert [ws.recv(timeout=TIMEOUT) for _ in sent] == sent


def test_a_message_kept_by_ws4redis_is_replayed_by_our_server(reference, server):
    facility = unique("kept")
    reference[0].RedisPublisher(facility=facility, broadcast=True).publish_message(
        reference[1].RedisMessage("kept by ws4redis"), expire=60
    )
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        assert ws.recv(timeout=TIMEOUT) == "kept by ws4redis"


def test_each_side_fetches_what_the_other_kept(reference, ours):
    facility = unique("fetch")
    request = django_request("john")
    ours[0].RedisPublisher(facility=facility, users=["john"]).publish_message(
        ours[1].RedisMessage("kept by us"), expire=60
    )
    assert reference[0].RedisPublisher(facility=facility).fetch_message(request, facility) == b"kept by us"
    reference[0].RedisPublisher(facility=facility, groups=["chatusers"]).publish_message(
        reference[1].RedisMessage("kept by ws4redis"), expire=60
    )
    assert ours[0].RedisPublisher(facility=facility).fetch_message(request, facility, "group") == b"kept by ws4redis"


def test_with_history_on_the_reference_publisher_still_reaches_both_wires(reference, twistd_servers, redis_client):
    """History on: ws4redis' plain PUBLISH (no envelope) reaches a plain socket
    as it was sent and a ws4redis.v2 socket with no id; what it kept is a v2
    subscription's first message, with no id either."""
    server = twistd_servers({"WS4REDIS_HISTORY_SIZE": 10})
    facility = unique("interop-history")
    reference[0].RedisPublisher(facility=facility, broadcast=True).publish_message(
        reference[1].RedisMessage("kept by ws4redis"), expire=60
    )
    with (
        open_ws(server, f"{facility}?subscribe-broadcast") as plain,
        connect(server.ws_url(""), subprotocols=["ws4redis.v2"], open_timeout=TIMEOUT) as v2,
    ):
        assert plain.recv(timeout=TIMEOUT) == "kept by ws4redis"
        v2.send(json.dumps({"op": "subscribe", "facility": facility, "audience": "broadcast", "ref": 1}))
        assert json.loads(v2.recv(timeout=TIMEOUT)) == {
            "op": "subscribed",
            "facility": facility,
            "audience": "broadcast",
            "ref": 1,
        }
        assert json.loads(v2.recv(timeout=TIMEOUT)) == {
            "op": "message",
            "facility": facility,
            "audience": "broadcast",
            "id": None,
            "data": "kept by ws4redis",
        }
        wait_subscribed(redis_client, f"broadcast:{facility}")
        reference[0].RedisPublisher(facility=facility, broadcast=True).publish_message(
            reference[1].RedisMessage("live from ws4redis"), expire=0
        )
        assert plain.recv(timeout=TIMEOUT) == "live from ws4redis"
        assert json.loads(v2.recv(timeout=TIMEOUT))["id"] is None


def test_with_history_on_ws4redis_fetches_what_we_kept_unwrapped(reference, ours):
    from django.test import override_settings

    facility = unique("fetch-history")
    request = django_request("john")
    with override_settings(WS4REDIS_HISTORY_SIZE=10):
        ours[0].RedisPublisher(facility=facility, users=["john"]).publish_message(
            ours[1].RedisMessage("kept by us, recorded"), expire=60
        )
    assert reference[0].RedisPublisher(facility=facility).fetch_message(request, facility) == b"kept by us, recorded"
