"""The blocking, Django-side API: RedisPublisher, fetch_message, RedisMessage
and SELF, in this process against the real test Redis."""

from __future__ import annotations

import pytest
from django.test import override_settings

from conftest import django_request, unique

pytestmark = pytest.mark.usefixtures("django_in_process")


@pytest.fixture
def api(redis_client):
    from twisted_ws4redis import publisher, redis_store

    return publisher.RedisPublisher, redis_store.RedisMessage, redis_store.SELF


def test_publish_returns_the_receivers_and_persists_with_an_expiry(api, redis_client):
    RedisPublisher, RedisMessage, _ = api
    facility = unique("pub")
    listener = redis_client.pubsub()
    listener.subscribe(f"broadcast:{facility}")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    received = RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("hi"), expire=60)
    assert received == 1
    assert listener.get_message(timeout=5)["data"] == b"hi"
    assert redis_client.get(f"broadcast:{facility}") == b"hi"
    assert 0 < redis_client.ttl(f"broadcast:{facility}") <= 60
    listener.close()


def test_expire_zero_and_the_default_keep_nothing(api, redis_client):
    """The test project sets WS4REDIS_EXPIRE = 0; publish_message(expire=None) uses it."""
    RedisPublisher, RedisMessage, _ = api
    facility = unique("nokeep")
    publisher = RedisPublisher(facility=facility, broadcast=True)
    assert publisher.publish_message(RedisMessage("gone")) == 0
    assert publisher.publish_message(RedisMessage("gone too"), expire=0) == 0
    assert redis_client.exists(f"broadcast:{facility}") == 0


def test_the_expire_setting_is_the_default(api, redis_client):
    RedisPublisher, RedisMessage, _ = api
    facility = unique("default")
    with override_settings(WS4REDIS_EXPIRE=120):
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("kept"))
    assert 60 < redis_client.ttl(f"broadcast:{facility}") <= 120


def test_every_audience_and_self(api):
    RedisPublisher, _, SELF = api
    request = django_request("mary")
    publisher = RedisPublisher(
        facility="f", broadcast=True, users=["john", SELF], groups=[SELF], sessions=[SELF, "abc"], request=request
    )
    key = request.session.session_key
    assert sorted(publisher._publishers) == sorted(
        [
            "broadcast:f",
            "user:john:f",
            "user:mary:f",
            "group:chatusers:f",
            "group:staff:f",
            f"session:{key}:f",
            "session:abc:f",
        ]
    )


def test_self_of_an_anonymous_request_is_nobody(api):
    RedisPublisher, _, SELF = api
    publisher = RedisPublisher(facility="f", users=[SELF], groups=[SELF], request=django_request())
    assert publisher._publishers == []


def test_a_bad_audience_value_is_refused(api):
    RedisPublisher, _, _ = api
    with pytest.raises(ValueError, match="must be a list or tuple"):
        RedisPublisher(facility="f", users=42)


def test_the_prefix_applies_to_channels_and_keys(api, redis_client):
    RedisPublisher, RedisMessage, _ = api
    facility = unique("prefixed")
    with override_settings(WS4REDIS_PREFIX="site"):
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("x"), expire=60)
    assert redis_client.get(f"site:broadcast:{facility}") == b"x"


def test_fetch_message_searches_session_user_groups_broadcast(api, redis_client):
    RedisPublisher, RedisMessage, SELF = api
    facility = unique("fetch")
    request = django_request("john")
    publisher = RedisPublisher(facility=facility)

    def keep(message, **audience):
        RedisPublisher(facility=facility, request=request, **audience).publish_message(RedisMessage(message), expire=60)

    assert publisher.fetch_message(request, facility) is None
    keep("to all", broadcast=True)
    assert publisher.fetch_message(request, facility) == b"to all"
    keep("to the group", groups=[SELF])
    assert publisher.fetch_message(request, facility) == b"to the group"
    keep("to john", users=[SELF])
    assert publisher.fetch_message(request, facility) == b"to john"
    keep("to the session", sessions=[SELF])
    assert publisher.fetch_message(request, facility) == b"to the session"
    assert publisher.fetch_message(request, facility, "broadcast") == b"to all"
    assert publisher.fetch_message(request, facility, "group") == b"to the group"
    assert publisher.fetch_message(request, facility, "user") == b"to john"
    assert publisher.fetch_message(django_request(), facility) == b"to all"
    with pytest.raises(ValueError, match="audience must be one of"):
        publisher.fetch_message(request, facility, "everyone")


def test_redis_message(api):
    _, RedisMessage, _ = api
    assert RedisMessage("héllo") == "héllo".encode()
    assert isinstance(RedisMessage(b"\xff"), bytes)
    assert RedisMessage([b"message", b"channel", b"data"]) == b"data"
    assert RedisMessage("") is None
    assert RedisMessage(42) is None
    with override_settings(WS4REDIS_HEARTBEAT="--hb--"):
        assert RedisMessage("--hb--") is None
        assert RedisMessage(b"--hb--") is None


def test_publish_message_wants_a_redis_message(api):
    RedisPublisher, _, _ = api
    with pytest.raises(ValueError, match="message must be a RedisMessage"):
        RedisPublisher(facility="f", broadcast=True).publish_message("plain str")
