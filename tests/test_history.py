"""History in Redis (WS4REDIS_HISTORY_SIZE): what RedisPublisher, blocking and
async, records and publishes, against the real test Redis; the recovery and
current-message scripts run directly; and the id and envelope helpers."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis
from django.test import override_settings

from conftest import unique
from twisted_ws4redis import history

TIMEOUT = 5
MAX = 2**64 - 1


@pytest.fixture
def api(django_in_process, redis_client):
    from twisted_ws4redis import publisher, redis_store

    return publisher.RedisPublisher, redis_store.RedisMessage


def publish(way: str, publisher, message, expire=None) -> int:
    if way == "sync":
        return publisher.publish_message(message, expire)
    return asyncio.run(publisher.apublish_message(message, expire))


def subscribed(client: redis.Redis, *channels: str):
    listener = client.pubsub()
    listener.subscribe(*channels)
    for _ in channels:
        assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    return listener


def received(listener, count: int) -> list[tuple[bytes, bytes]]:
    """(channel, raw data) of the next ``count`` messages."""
    messages = []
    for _ in range(count):
        message = listener.get_message(timeout=TIMEOUT)
        assert message is not None
        assert message["type"] == "message"
        messages.append((message["channel"], message["data"]))
    return messages


def stream_ids(client: redis.Redis, channel: str, prefix: str = "") -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(history.history_key(channel, prefix))]


def ordered(ids: list[str]) -> bool:
    parsed = [history.parse_id(value) for value in ids]
    return all(a < b for a, b in itertools.pairwise(parsed))


# RedisPublisher with the history on ---------------------------------------------


@pytest.mark.parametrize("way", ["sync", "async"])
def test_each_publication_is_recorded_and_published_with_its_id(api, redis_client, way):
    RedisPublisher, RedisMessage = api
    facility = unique(f"hist-{way}")
    channels = [f"broadcast:{facility}", f"user:john:{facility}"]
    listener = subscribed(redis_client, *channels)
    payloads = [f"message {n}".encode() for n in range(5)]
    with override_settings(WS4REDIS_HISTORY_SIZE=10, WS4REDIS_HISTORY_TTL=300):
        publisher = RedisPublisher(facility=facility, broadcast=True, users=["john"])
        counts = [publish(way, publisher, RedisMessage(payload), expire=60) for payload in payloads]
    assert counts == [2] * 5, "the summed subscriber count, as without history"
    seen = received(listener, 10)
    listener.close()
    for channel in channels:
        recorded = redis_client.xrange(history.history_key(channel, ""))
        assert [fields for _, fields in recorded] == [{b"m": payload} for payload in payloads]
        ids = [entry_id.decode() for entry_id, _ in recorded]
        assert ordered(ids), ids
        raw = [data for name, data in seen if name == channel.encode()]
        assert raw == [history.ENVELOPE_MAGIC + i.encode() + b"\0" + p for i, p in zip(ids, payloads, strict=True)]
        assert [history.unwrap(data) for data in raw] == list(zip(ids, payloads, strict=True))
        assert redis_client.get(channel) == payloads[-1], "the persisted message stays raw"
        assert 0 < redis_client.ttl(channel) <= 60
        assert 240 < redis_client.ttl(history.history_key(channel, "")) <= 300


@pytest.mark.parametrize("way", ["sync", "async"])
def test_the_history_keeps_the_last_size_messages_and_marks_the_trimmed(api, redis_client, way):
    RedisPublisher, RedisMessage = api
    facility = unique(f"trim-{way}")
    channel = f"broadcast:{facility}"
    with override_settings(WS4REDIS_HISTORY_SIZE=3):
        publisher = RedisPublisher(facility=facility, broadcast=True)
        for n in range(7):
            publish(way, publisher, RedisMessage(f"m{n}"), expire=0)
    key = history.history_key(channel, "")
    entries = redis_client.xrange(key)
    assert [fields[b"m"] for _, fields in entries] == [b"m4", b"m5", b"m6"]
    assert redis_client.xinfo_stream(key)["entries-added"] == 7
    trimmed = redis_client.get(history.trimmed_key(channel, "")).decode()
    assert ordered([trimmed, entries[0][0].decode()])
    assert 0 < redis_client.ttl(history.trimmed_key(channel, "")) <= 3600, "kept as long as the stream"
    assert redis_client.exists(channel) == 0, "expire 0 keeps no persisted message"
    assert 0 < redis_client.ttl(key) <= 3600, "WS4REDIS_HISTORY_TTL's default"


@pytest.mark.parametrize("way", ["sync", "async"])
def test_a_script_redis_does_not_know_is_sent_once_and_runs_once(api, redis_client, way):
    """After SCRIPT FLUSH (or a Redis restart) the digest fails for every
    channel, nothing ran, and the publication is sent again with the script."""
    RedisPublisher, RedisMessage = api
    facility = unique(f"noscript-{way}")
    channels = [f"broadcast:{facility}", f"user:mary:{facility}"]
    listener = subscribed(redis_client, *channels)
    with override_settings(WS4REDIS_HISTORY_SIZE=5):
        publisher = RedisPublisher(facility=facility, broadcast=True, users=["mary"])
        redis_client.script_flush()
        redis_client.config_resetstat()
        assert publish(way, publisher, RedisMessage("after flush"), expire=60) == 2
        stats = redis_client.info("commandstats")
        assert stats["cmdstat_eval"]["calls"] == 2
        assert redis_client.script_exists(history.PUBLISH_SHA) == [True]
        assert publish(way, publisher, RedisMessage("by digest"), expire=60) == 2
        assert redis_client.info("commandstats")["cmdstat_eval"]["calls"] == 2, "the digest again"
    for channel in channels:
        assert [fields[b"m"] for _, fields in redis_client.xrange(history.history_key(channel, ""))] == [
            b"after flush",
            b"by digest",
        ]
    data = [history.unwrap(raw)[1] for _, raw in received(listener, 4)]
    assert sorted(data) == [b"after flush", b"after flush", b"by digest", b"by digest"]
    listener.close()


def test_the_history_lives_under_the_prefix(api, redis_client):
    RedisPublisher, RedisMessage = api
    facility = unique("hist-prefix")
    with override_settings(WS4REDIS_HISTORY_SIZE=5, WS4REDIS_PREFIX="site"):
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("x"), expire=60)
    assert history.history_key(f"site:broadcast:{facility}", "site:") == f"site:ws4redis:history:broadcast:{facility}"
    assert redis_client.xlen(f"site:ws4redis:history:broadcast:{facility}") == 1
    assert redis_client.get(f"site:broadcast:{facility}") == b"x"


@pytest.mark.parametrize("way", ["sync", "async"])
def test_with_the_history_off_the_commands_are_publish_and_setex(api, redis_client, way):
    """What Redis executes, as MONITOR shows it: the ws4redis commands, the payload raw."""
    RedisPublisher, RedisMessage = api
    facility = unique(f"off-{way}")
    channel = f"broadcast:{facility}"
    listener = subscribed(redis_client, channel)
    publisher = RedisPublisher(facility=facility, broadcast=True)
    with redis_client.monitor() as monitor:
        assert publish(way, publisher, RedisMessage("plain"), expire=60) == 1
        commands = []
        while not commands or commands[-1] != "EXEC":
            command = monitor.next_command()["command"]
            if commands or command == "MULTI":
                commands.append(command)
    assert commands == ["MULTI", f"PUBLISH {channel} plain", f"SETEX {channel} 60 plain", "EXEC"]
    assert received(listener, 1) == [(channel.encode(), b"plain")]
    listener.close()
    assert redis_client.keys("*ws4redis:*") == []


# The scripts, directly ------------------------------------------------------------


def record(client: redis.Redis, channel: str, payloads, size: int, expire: int = 0) -> list[str]:
    """Publish through PUBLISH_SCRIPT as every publisher does; the ids."""
    ids = []
    for payload in payloads:
        _, entry_id = client.evalsha(
            history.PUBLISH_SHA, 3, *history.publish_keys(channel, ""), *history.publish_args(payload, expire, size, 60)
        )
        ids.append(entry_id.decode())
    return ids


def recover(client: redis.Redis, channel: str, since: str, size: int):
    """(recoverable, ids after since) as the server reads RECOVER_SCRIPT's reply;
    None when the script finds no stream reaching ``since``."""
    reply = client.eval(history.RECOVER_SCRIPT, 2, *history.recover_keys(channel, ""), since, size)
    if reply is None:
        return None
    trimmed, entries = reply
    return (
        history.parse_id(trimmed.decode()) <= history.parse_id(since),
        [entry_id.decode() for entry_id, _ in entries],
    )


@pytest.fixture
def scripts(redis_client):
    redis_client.script_load(history.PUBLISH_SCRIPT)
    return redis_client


def test_recovery_from_an_id_still_recorded_gives_every_later_one(scripts):
    channel = f"broadcast:{unique('rec')}"
    ids = record(scripts, channel, [b"a", b"b", b"c", b"d"], size=10)
    assert recover(scripts, channel, ids[1], 10) == (True, ids[2:])
    assert recover(scripts, channel, ids[0], 10) == (True, ids[1:])
    assert recover(scripts, channel, ids[-1], 10) == (True, [])


def test_recovery_reaches_back_exactly_to_the_last_trimmed_id(scripts):
    channel = f"broadcast:{unique('rec-trim')}"
    ids = record(scripts, channel, [b"%d" % n for n in range(8)], size=3)
    assert stream_ids(scripts, channel) == ids[5:]
    assert recover(scripts, channel, ids[4], 3) == (True, ids[5:]), "the last trimmed: nothing lost"
    assert recover(scripts, channel, ids[3], 3)[0] is False, "its successor is gone"
    assert recover(scripts, channel, "0-1", 3)[0] is False


def test_a_fresh_stream_recovers_no_id_from_before_it(scripts):
    channel = f"broadcast:{unique('rec-fresh')}"
    assert recover(scripts, channel, "0-1", 10) is None, "no stream at all"
    first = record(scripts, channel, [b"first"], size=10)
    assert recover(scripts, channel, first[0], 10) == (True, [])
    assert recover(scripts, channel, "1-0", 10)[0] is False, "before its first entry"


def test_an_emptied_stream_marks_what_it_had_as_trimmed(scripts):
    """A stream that exists with no entry (XTRIM'd to nothing) continues its
    ids; its next entry marks everything before it as trimmed."""
    channel = f"broadcast:{unique('rec-emptied')}"
    key = history.history_key(channel, "")
    scripts.xadd(key, {"m": "later than now"}, id="99999999999999-5")
    scripts.xtrim(key, maxlen=0)
    new = record(scripts, channel, [b"next"], size=10)
    assert new == ["99999999999999-6"]
    assert recover(scripts, channel, "99999999999999-5", 10) == (True, new)
    assert recover(scripts, channel, "99999999999999-4", 10)[0] is False


def test_an_id_of_an_expired_stream_is_not_recovered_from_its_successor(scripts):
    channel = f"broadcast:{unique('rec-expired')}"
    key = history.history_key(channel, "")
    old = record(scripts, channel, [b"old 1", b"old 2"], size=10)
    scripts.pexpire(key, 1)
    deadline = time.monotonic() + TIMEOUT
    while scripts.exists(key):
        assert time.monotonic() < deadline, "the stream did not expire"
        time.sleep(0.01)
    assert recover(scripts, channel, old[-1], 10) is None
    new = record(scripts, channel, [b"new"], size=10)
    assert ordered([old[-1], new[0]])
    assert recover(scripts, channel, old[-1], 10) == (False, new)
    assert recover(scripts, channel, old[0], 10)[0] is False


def test_an_id_later_than_the_stream_ever_gave_is_not_recovered(scripts):
    """A since the stream could not have given (an older stream's after the
    clock went back, or made up) finds no stream reaching it; the greatest id
    parse_id accepts is no error for Redis."""
    channel = f"broadcast:{unique('rec-future')}"
    ids = record(scripts, channel, [b"a"], size=10)
    ms, seq = history.parse_id(ids[0])
    for since in (f"{ms}-{seq + 1}", f"{ms + 1}-0", f"{MAX}-{MAX}"):
        assert recover(scripts, channel, since, 10) is None, since
    assert recover(scripts, channel, f"000{ms}-{seq}", 10) == (True, []), "leading zeros are the same id"


def test_current_gives_the_persisted_message_and_the_last_entry(scripts):
    channel = f"broadcast:{unique('current')}"
    key = history.history_key(channel, "")
    assert scripts.eval(history.CURRENT_SCRIPT, 2, channel, key) == [None, []]
    ids = record(scripts, channel, [b"one", b"two"], size=10, expire=60)
    persisted, last = scripts.eval(history.CURRENT_SCRIPT, 2, channel, key)
    assert persisted == b"two"
    assert [(entry_id.decode(), history.entry_payload(fields)) for entry_id, fields in last] == [(ids[1], b"two")]
    scripts.set(channel, b"set by a foreign publisher", ex=60)
    persisted, last = scripts.eval(history.CURRENT_SCRIPT, 2, channel, key)
    assert persisted == b"set by a foreign publisher" != history.entry_payload(last[0][1])


# Ids and envelopes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1733059200000-0", (1733059200000, 0)),
        ("0-0", (0, 0)),
        ("007-010", (7, 10)),
        (f"{MAX}-{MAX}", (MAX, MAX)),
        ("0" * 20 + "-1", (0, 1)),
    ],
)
def test_parse_id_accepts_ids(value, expected):
    assert history.parse_id(value) == expected
    assert history.format_id(expected) == f"{expected[0]}-{expected[1]}"


@pytest.mark.parametrize(
    "value",
    [
        f"{MAX + 1}-0",
        f"0-{MAX + 1}",
        "0" * 21 + "-1",
        "",
        "1",
        "1-",
        "-1",
        "1-0-0",
        " 1-0",
        "1-0\n",
        "+1-0",
        "1_0-0",
        "1.5-0",
        "0x1-0",
        "\u0661-\u0662",
        "\uff11-0",
        1,
        1.0,
        True,
        None,
        b"1-0",
        ["1-0"],
        {"id": "1-0"},
    ],
)
def test_parse_id_refuses_everything_else(value):
    assert history.parse_id(value) is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (history.ENVELOPE_MAGIC + b"5-1\0hello", ("5-1", b"hello")),
        (history.ENVELOPE_MAGIC + b"5-1\0a\0b", ("5-1", b"a\0b")),
        (history.ENVELOPE_MAGIC + b"5-1\0", ("5-1", b"")),
        (b"hello", (None, b"hello")),
        (b"", (None, b"")),
        (history.ENVELOPE_MAGIC + b"5-1", (None, history.ENVELOPE_MAGIC + b"5-1")),
        # An envelope with no id: what history.plain() wraps a payload that starts like one in.
        (history.ENVELOPE_MAGIC + b"\0x", (None, b"x")),
        (history.plain(history.ENVELOPE_MAGIC + b"5-1\0forged"), (None, history.ENVELOPE_MAGIC + b"5-1\0forged")),
        (history.ENVELOPE_MAGIC + b"no id\0x", (None, history.ENVELOPE_MAGIC + b"no id\0x")),
        (history.ENVELOPE_MAGIC + b"\xff-1\0x", (None, history.ENVELOPE_MAGIC + b"\xff-1\0x")),
        (b"\0ws4redis", (None, b"\0ws4redis")),
    ],
)
def test_unwrap(payload, expected):
    assert history.unwrap(payload) == expected
