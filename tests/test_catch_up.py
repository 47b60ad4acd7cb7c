"""With the history on, the server's own Redis subscriber catches up after it
lost its connection: what was published while it was away reaches the open
websockets (plain and ws4redis.v2) once, in order, before the live ones."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from conftest import open_ws, unique, wait_subscribed
from twisted_ws4redis import history

HISTORY = {"WS4REDIS_HISTORY_SIZE": 50}


def publish_recorded(client, channel: str, payload: bytes) -> None:
    """What RedisPublisher does with the history on: the history's script."""
    client.eval(
        history.PUBLISH_SCRIPT, 3, *history.publish_keys(channel, ""), *history.publish_args(payload, 0, 50, 3600)
    )


@pytest.fixture
def catching_up(twistd_servers, redis_client):
    return twistd_servers(HISTORY)


def test_messages_published_while_the_subscriber_reconnects_are_delivered_once_in_order(catching_up, redis_client):
    facility = unique("catchup")
    channel = f"broadcast:{facility}"
    with (
        open_ws(catching_up, f"{facility}?subscribe-broadcast") as plain,
        connect(
            catching_up.ws_url(f"{facility}?subscribe-broadcast"), subprotocols=["ws4redis.v2"], open_timeout=5
        ) as v2,
    ):
        assert json.loads(v2.recv(timeout=5))["op"] == "subscribed"
        wait_subscribed(redis_client, channel)
        publish_recorded(redis_client, channel, b"before")
        assert plain.recv(timeout=5) == "before"
        assert json.loads(v2.recv(timeout=5))["data"] == "before"

        redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        missed = [f"missed-{n}".encode() for n in range(5)]
        for payload in missed:  # before the server reconnects (its first retry waits 0.5 s)
            publish_recorded(redis_client, channel, payload)
        deadline = time.monotonic() + 10
        while dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0) < 1:
            assert time.monotonic() < deadline, "the server did not subscribe again"
            time.sleep(0.02)
        publish_recorded(redis_client, channel, b"live")

        expected = [payload.decode() for payload in missed] + ["live"]
        assert [plain.recv(timeout=5) for _ in expected] == expected
        received = [json.loads(v2.recv(timeout=5)) for _ in expected]
        assert [op["data"] for op in received] == expected
        ids = [history.parse_id(op["id"]) for op in received]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        with pytest.raises(TimeoutError):  # nothing twice
            plain.recv(timeout=0.5)
        with pytest.raises(TimeoutError):
            v2.recv(timeout=0.1)
