"""Redis through Sentinel: a real master, replica and sentinel; the master is
killed mid-stream and both the server and the publisher follow the failover."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from conftest import TwistdServer, free_port, open_ws, unique, wait_for_port, wait_subscribed
from twisted_ws4redis.server.embedded import redis_server_binary

TIMEOUT = 5
SERVICE = "mymaster"


class Node:
    """One redis-server process (a data node, or a sentinel)."""

    def __init__(self, directory: Path, name: str, args: list[str]):
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    redis_server_binary(),
                    *args,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, process=self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


@pytest.fixture
def sentinel_cluster(tmp_path):
    nodes: list[Node] = []
    try:
        master = Node(tmp_path / "master", "master", ["--save", "", "--appendonly", "no"])
        nodes.append(master)
        replica = Node(
            tmp_path / "replica",
            "replica",
            ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master.port)],
        )
        nodes.append(replica)
        config = tmp_path / "sentinel" / "sentinel.conf"
        config.parent.mkdir()
        config.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        sentinel = Node(tmp_path / "sentinel", "sentinel", [str(config), "--sentinel"])
        nodes.append(sentinel)
        deadline = time.monotonic() + 20
        while replica.client().info("replication").get(
            "master_link_status"
        ) != "up" or not sentinel.client().execute_command("SENTINEL", "REPLICAS", SERVICE):
            assert time.monotonic() < deadline, "replica or sentinel not ready"
            time.sleep(0.1)
        yield master, replica, sentinel
    finally:
        for node in reversed(nodes):
            node.stop(signal.SIGKILL)


def publish_until_received(publish, ws, message: str, timeout: float = 30) -> None:
    """Publish ``message`` until ``ws`` receives it: while Redis fails over,
    the publisher raises RedisUnavailable at once (no hang), then works."""
    from twisted_ws4redis.exceptions import RedisUnavailable

    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"{message!r} never arrived"
        try:
            publish(message)
        except RedisUnavailable:
            time.sleep(0.2)
            continue
        try:
            assert ws.recv(timeout=1) == message
            return
        except TimeoutError:
            continue


@pytest.mark.usefixtures("django_in_process")
def test_server_and_publisher_follow_a_failover(sentinel_cluster, test_db):
    from twisted_ws4redis.conf import set_redis_override
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_address import RedisAddress
    from twisted_ws4redis.redis_store import RedisMessage

    master, replica, sentinel = sentinel_cluster
    server = TwistdServer(f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}/0", test_db)
    set_redis_override(RedisAddress.from_dict({"sentinels": [("127.0.0.1", sentinel.port)], "service_name": SERVICE}))
    facility = unique("sentinel")
    channel = f"broadcast:{facility}"
    publisher = RedisPublisher(facility=facility, broadcast=True)

    def publish(message: str) -> None:
        publisher.publish_message(RedisMessage(message), expire=60)

    try:
        # Kept before the socket opens, so it arrives once, as the replay (a
        # message kept while a socket subscribes may arrive live and replayed).
        publish("before the failover")
        with open_ws(server, f"{facility}?subscribe-broadcast&publish-broadcast") as ws:
            assert ws.recv(timeout=TIMEOUT) == "before the failover"
            wait_subscribed(master.client(), channel)
            assert master.client().get(channel) == b"before the failover"

            master.stop(signal.SIGKILL)
            publish_until_received(publish, ws, "after the failover")
            assert replica.client().info("replication")["role"] == "master"
            assert replica.client().get(channel) == b"after the failover"

            # The server's own command connection follows too: what the socket
            # sends reaches the new master once that connection is back (a
            # message sent while it is not is dropped after socket_timeout and
            # logged, as pub/sub is at-most-once; so the socket keeps sending).
            listener = replica.client().pubsub()
            listener.subscribe(channel)
            assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
            deadline = time.monotonic() + 30
            arrived = False
            while not arrived:
                assert time.monotonic() < deadline, "the socket's messages never reached the new master"
                ws.send("from the socket, after the failover")
                message = listener.get_message(timeout=1)
                arrived = bool(message) and message["data"] == b"from the socket, after the failover"
            listener.close()
        log = server.log()
        assert "redis+sentinel://" in log
        assert "Redis subscriber connected" in log
    finally:
        set_redis_override(None)
        server.stop()


def test_sentinel_settings_are_validated():
    from twisted_ws4redis.redis_address import RedisAddress

    address = RedisAddress.from_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/cache/2")
    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (address.service_name, address.db, address.password) == ("cache", 2, "pw")
    assert str(address) == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/cache/2"
    assert RedisAddress.from_dict({"sentinels": ["h:1"], "service_name": "m"}).sentinels == (("h", 1),)
    for bad in (
        {"sentinels": [("h", 1)]},
        {"service_name": "m"},
        {"sentinels": "h:1", "service_name": "m"},
        {"sentinels": [("h", "x")], "service_name": "m"},
        {"sentinels": [("h", 1)], "service_name": "m", "unix_socket_path": "/s"},
    ):
        with pytest.raises(ValueError, match="WS4REDIS_CONNECTION"):
            RedisAddress.from_dict(bad)
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h:x/m", "redis+sentinel://h:1/m/0/extra"):
        with pytest.raises(ValueError, match="--redis"):
            RedisAddress.from_url(bad)
