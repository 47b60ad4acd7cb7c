"""Redis Cluster: a real 3-master, 3-replica cluster started here; messages on
channels of every shard published by RedisPublisher (blocking and asyncio) and
by sockets, persisted messages and history per shard, presence, logout through
the control channel, and a master SIGKILLed mid-stream with its replica
promoted while a socket goes on receiving."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from django.test import override_settings
from redis.cluster import ClusterNode, RedisCluster
from websockets.exceptions import ConnectionClosed

from conftest import TwistdServer, login, open_ws, project_env, session_key, unique, wait_for_port, warm_up
from test_cli import run_twistd
from test_v2 import open_v2
from twisted_ws4redis.server.embedded import redis_server_binary

TIMEOUT = 5
HISTORY = {"WS4REDIS_HISTORY_SIZE": 100, "WS4REDIS_PRESENCE": True}


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, so at most 65,535) is free too."""
    while True:
        port = random.randrange(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


class Node:
    """One redis-server of the cluster, restartable on its port and files."""

    def __init__(self, directory: Path):
        self.port = cluster_port()
        self.directory = directory
        directory.mkdir(parents=True)
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    redis_server_binary(),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self.directory / "nodes.conf"),
                    "--cluster-node-timeout",
                    "1500",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--repl-diskless-sync-delay",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, process=self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=TIMEOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Cluster:
    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes[:2])

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", self.nodes[0].port)], socket_timeout=TIMEOUT)

    def masters(self) -> list[Node]:
        return [
            node
            for node in self.nodes
            if node.process.poll() is None and node.client().info("replication")["role"] == "master"
        ]

    def master_of(self, channel: str) -> Node | None:
        """The live master that holds ``channel``'s slot (None while it fails over)."""
        for node in self.masters():
            try:
                node.client().exists(channel)
                return node
            except redis.ResponseError:  # MOVED
                continue
        return None

    def subscribers(self, channel: str) -> int:
        """The sharded subscribers of ``channel`` on its master."""
        return self.master_of(channel).client().execute_command("PUBSUB", "SHARDNUMSUB", channel)[1]

    def wait_subscribed(self, channel: str, count: int = 1) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.subscribers(channel) < count:
            assert time.monotonic() < deadline, f"{channel!r} has no sharded subscriber"
            time.sleep(0.01)

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node says cluster_state:ok and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while True:
            live = [node for node in self.nodes if node.process.poll() is None]
            try:
                states = [node.client().execute_command("CLUSTER", "INFO") for node in live]
                replication = [node.client().info("replication") for node in live]
                # A replica that has not synced yet cannot take over from its master.
                if all(b"cluster_state:ok" in state for state in states) and all(
                    info.get("master_link_status", "up") == "up" for info in replication
                ):
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the cluster is not ok"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cluster")
    nodes: list[Node] = []
    try:
        for number in range(6):
            nodes.append(Node(directory / f"node{number}"))  # noqa: PERF401 (one by one: a failure stops those started)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster = Cluster(nodes)
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture(scope="module")
def on_cluster(redis_cluster, django_in_process):
    """This process' RedisPublisher on the cluster."""
    from twisted_ws4redis.conf import set_redis_override
    from twisted_ws4redis.redis_address import RedisAddress

    set_redis_override(RedisAddress.from_url(redis_cluster.url))
    yield redis_cluster
    set_redis_override(None)


@pytest.fixture(scope="module")
def plain(redis_cluster, test_db):
    server = TwistdServer(redis_cluster.url, test_db)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def recorded(redis_cluster, test_db):
    server = TwistdServer(redis_cluster.url, test_db, HISTORY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hearing_plain(redis_cluster, test_db):
    server = TwistdServer(redis_cluster.url, test_db, {"WS4REDIS_CLUSTER_PLAIN_PUBLISH": True})
    yield server
    server.stop()


def per_master(cluster: Cluster, channel_of) -> list[str]:
    """Facilities whose ``channel_of(facility)`` lands on each master, one a master."""
    found: dict[int, str] = {}
    masters = {node.port for node in cluster.masters()}
    while len(found) < len(masters):
        facility = unique("cl")
        found.setdefault(cluster.master_of(channel_of(facility)).port, facility)
    assert len(masters) == 3
    return list(found.values())


def publish(facility: str, text: str, expire: int = 0, **audience) -> int:
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    return RedisPublisher(facility=facility, **audience).publish_message(RedisMessage(text), expire)


def test_messages_of_every_shard_and_audience_reach_the_sockets(on_cluster, plain):
    cookie = login(plain, "john")
    audiences = {  # query flag: (channel name, RedisPublisher's audience)
        "broadcast": (lambda f: f"broadcast:{f}", {"broadcast": True}),
        "user": (lambda f: f"user:john:{f}", {"users": ["john"]}),
        "group": (lambda f: f"group:chatusers:{f}", {"groups": ["chatusers"]}),
        "session": (lambda f: f"session:{session_key(cookie)}:{f}", {"sessions": [session_key(cookie)]}),
    }
    for flag, (channel_of, audience) in audiences.items():
        for facility in per_master(on_cluster, channel_of):
            with open_ws(plain, f"{facility}?subscribe-{flag}", cookie) as ws:
                on_cluster.wait_subscribed(channel_of(facility))
                assert publish(facility, f"{flag} on {facility}", **audience) == 1
                assert ws.recv(timeout=TIMEOUT) == f"{flag} on {facility}"


def test_the_asyncio_publisher_publishes_and_fetches_on_every_shard(on_cluster, plain):
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    facilities = per_master(on_cluster, lambda f: f"broadcast:{f}")

    async def publish_all() -> list[int]:
        return [
            await RedisPublisher(facility=f, broadcast=True).apublish_message(RedisMessage(f"async {f}"), 60)
            for f in facilities
        ]

    async def fetch_all() -> list:
        return [await RedisPublisher().afetch_message(None, f, "broadcast") for f in facilities]

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_ws(plain, f"{f}?subscribe-broadcast")) for f in facilities]
        for facility in facilities:
            on_cluster.wait_subscribed(f"broadcast:{facility}")
        assert asyncio.run(publish_all()) == [1, 1, 1]
        assert [ws.recv(timeout=TIMEOUT) for ws in sockets] == [f"async {f}" for f in facilities]
    assert asyncio.run(fetch_all()) == [f"async {f}".encode() for f in facilities]
    assert [RedisPublisher().fetch_message(None, f, "broadcast") for f in facilities] == [
        f"async {f}".encode() for f in facilities
    ]


@pytest.mark.parametrize("server", ["plain", "recorded"])
def test_a_socket_s_publish_reaches_another_socket_on_every_shard(on_cluster, server, request):
    server = request.getfixturevalue(server)
    for facility in per_master(on_cluster, lambda f: f"broadcast:{f}"):
        with (
            open_ws(server, f"{facility}?subscribe-broadcast") as reader,
            open_ws(server, f"{facility}?publish-broadcast") as writer,
        ):
            on_cluster.wait_subscribed(f"broadcast:{facility}")
            writer.send(f"from a socket on {facility}")
            assert reader.recv(timeout=TIMEOUT) == f"from a socket on {facility}"


def test_persisted_messages_of_several_shards_are_replayed_to_a_new_socket(on_cluster, plain):
    cookie = login(plain, "john")
    # One facility, three channels: their slots differ, so the server's MGET goes per slot.
    facility = unique("cl-kept")
    channels = [f"broadcast:{facility}", f"user:john:{facility}", f"group:chatusers:{facility}"]
    assert len({redis.crc.key_slot(channel.encode()) for channel in channels}) == 3
    publish(facility, "kept for everybody", 60, broadcast=True)
    publish(facility, "kept for john", 60, users=["john"])
    publish(facility, "kept for the group", 60, groups=["chatusers"])
    with open_ws(plain, f"{facility}?subscribe-broadcast&subscribe-user&subscribe-group", cookie) as ws:
        replayed = {ws.recv(timeout=TIMEOUT) for _ in channels}
    assert replayed == {"kept for everybody", "kept for john", "kept for the group"}


def test_history_is_recovered_per_shard(on_cluster, recorded):
    client = on_cluster.client()
    for facility in per_master(on_cluster, lambda f: f"broadcast:{f}"):
        with open_v2(recorded) as a:
            a.subscribe(facility)
            since = a.publish(facility, "seen")
            assert a.message()["data"] == "seen"
        deadline = time.monotonic() + TIMEOUT
        while on_cluster.subscribers(f"broadcast:{facility}"):  # the server unsubscribed: nobody listens
            assert time.monotonic() < deadline, "the server did not unsubscribe"
            time.sleep(0.01)
        with override_settings(**HISTORY):
            missed = [publish(facility, f"away {n}", broadcast=True) for n in range(3)]
        assert missed == [0, 0, 0]  # nobody listened
        # The history lives in the channel's slot, named with the channel as hash tag.
        assert client.xlen(f"ws4redis:history:{{broadcast:{facility}}}") == 4
        with open_v2(recorded) as a:
            reply = a.subscribe(facility, since=since)
            assert reply["recovered"] is True, reply
            assert [a.message()["data"] for _ in range(3)] == [f"away {n}" for n in range(3)]


def test_presence_on_a_cluster(on_cluster, recorded):
    from twisted_ws4redis.presence import node_prefix, nodes_key, present

    facility = unique("cl-here")
    cookie = login(recorded, "mary")
    with open_v2(recorded, cookie=cookie) as ws:
        ws.subscribe(facility)
        with override_settings(**HISTORY):
            deadline = time.monotonic() + TIMEOUT
            while present(facility)["users"] != ["mary"]:
                assert time.monotonic() < deadline, present(facility)
                time.sleep(0.05)
    # The empty facility's keys share a slot too ("{}" is no hash tag).
    assert redis.crc.key_slot(nodes_key("", "").encode()) == redis.crc.key_slot((node_prefix("", "") + "n").encode())


def test_logout_closes_sockets_through_the_control_channel(on_cluster, plain, recorded):
    from twisted_ws4redis.publisher import close_session_websockets

    facility = unique("cl-logout")
    cookie = login(plain, "ann")
    with (
        open_ws(plain, f"{facility}?subscribe-user", cookie) as one,
        open_ws(recorded, f"{facility}?subscribe-user", cookie) as two,
    ):
        on_cluster.wait_subscribed(f"user:ann:{facility}", 2)
        assert close_session_websockets(session_key(cookie)) >= 2  # both servers watch the control channel
        for ws in (one, two):
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 4401


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_a_node_that_lost_its_scripts_gets_the_script_and_the_others_publish_once(on_cluster, flavour):
    """One publication on channels of the three shards, with the history on;
    one master forgot the script (SCRIPT FLUSH): only that channel is sent
    again, with the script: every history holds the message once."""
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    facility = unique("cl-noscript")
    users = []
    while len({on_cluster.master_of(f"user:{user}:{facility}").port for user in users}) < 3:
        users.append(unique("u"))
    channels = [f"user:{user}:{facility}" for user in users]
    with override_settings(**HISTORY):
        publisher = RedisPublisher(facility=facility, users=users)
        publish_once = (
            (lambda: publisher.publish_message(RedisMessage("first")))
            if flavour == "blocking"
            else (lambda: asyncio.run(publisher.apublish_message(RedisMessage("first"))))
        )
        publish_once()  # every master knows the script now
        on_cluster.master_of(channels[0]).client().script_flush()
        assert publish_once() == 0
    client = on_cluster.client()
    for channel in channels:
        entries = client.xrange(f"ws4redis:history:{{{channel}}}")
        assert [fields[b"m"] for _, fields in entries] == [b"first", b"first"], channel


def test_a_plain_publish_reaches_only_a_server_that_opted_in(on_cluster, plain, hearing_plain):
    """A foreign publisher's PUBLISH (here redis-cli's, on some node) reaches
    the sockets of a server with WS4REDIS_CLUSTER_PLAIN_PUBLISH, not the
    others'; RedisPublisher's SPUBLISH reaches both, once."""
    for facility in per_master(on_cluster, lambda f: f"broadcast:{f}"):
        channel = f"broadcast:{facility}"
        with (
            open_ws(hearing_plain, f"{facility}?subscribe-broadcast") as hearing,
            open_ws(plain, f"{facility}?subscribe-broadcast") as deaf,
        ):
            on_cluster.wait_subscribed(channel, 2)
            deadline = time.monotonic() + TIMEOUT
            while (
                sum(
                    dict(node.client().pubsub_numsub(channel)).get(channel.encode(), 0)
                    for node in on_cluster.nodes
                    if node.process.poll() is None
                )
                < 1
            ):
                assert time.monotonic() < deadline, "no plain subscription"
                time.sleep(0.01)
            subprocess.run(
                ["redis-cli", "-p", str(on_cluster.nodes[-1].port), "PUBLISH", channel, "foreign"],
                check=True,
                capture_output=True,
                timeout=10,
            )
            assert publish(facility, "sharded", broadcast=True) == 2
            assert {hearing.recv(timeout=TIMEOUT), hearing.recv(timeout=TIMEOUT)} == {"foreign", "sharded"}
            assert deaf.recv(timeout=TIMEOUT) == "sharded"
            for ws in (hearing, deaf):  # nothing more: no double, no plain PUBLISH for the other
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0.3)


def test_bad_cluster_settings_are_named(test_db):
    from twisted_ws4redis.redis_address import RedisAddress

    address = RedisAddress.from_dict({"startup_nodes": ["10.0.0.1:7000", ("10.0.0.2", 7001)], "password": "pw"})
    assert address.cluster
    assert address.startup_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert str(RedisAddress.from_url("rediss+cluster://u:pw@h:1,h:2/0")) == "rediss+cluster://h:1,h:2"
    for bad in (
        {"startup_nodes": []},
        {"startup_nodes": ["h:1"], "db": 3},
        {"startup_nodes": ["h:x"]},
        {"startup_nodes": ["h:1"], "host": "h"},
        {"startup_nodes": ["h:1"], "unix_socket_path": "/s"},
    ):
        with pytest.raises(ValueError, match="WS4REDIS_CONNECTION"):
            RedisAddress.from_dict(bad)
    result = subprocess.run(
        [str(Path(__file__).parent.parent / ".venv/bin/python"), "-m", "django", "check"],
        env=project_env(test_db, {"WS4REDIS_CONNECTION": {"startup_nodes": ["h:1"], "db": 2}}),
        cwd=Path(__file__).parent / "project",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "twisted_ws4redis.E002" in result.stderr, result.stderr
    assert "only database 0" in result.stderr, result.stderr
    for url, says in (
        ("redis+cluster://", "startup_nodes must be a non-empty list"),
        ("redis+cluster://h:1/5", "only database 0"),
        ("redis+cluster://h:port", "a cluster node"),
    ):
        result = run_twistd(["--settings=testproject.settings", f"--redis={url}"], project_env(test_db))
        assert result.returncode != 0, result.stdout + result.stderr
        assert says in result.stdout + result.stderr, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_a_slot_moved_to_another_master_is_followed(on_cluster, plain):
    """The channel's slot is migrated while a socket listens: the old master
    drops the subscription (sunsubscribe), the server asks the slot table
    again and subscribes on the new master; the same socket goes on."""
    facility = unique("cl-moved")
    channel = f"broadcast:{facility}"
    slot = redis.crc.key_slot(channel.encode())
    source = on_cluster.master_of(channel)
    target = next(node for node in on_cluster.masters() if node is not source)
    source_id, target_id = (node.client().execute_command("CLUSTER", "MYID").decode() for node in (source, target))
    with open_ws(plain, f"{facility}?subscribe-broadcast") as ws:
        on_cluster.wait_subscribed(channel)
        assert publish(facility, "before the move", broadcast=True) == 1
        assert ws.recv(timeout=TIMEOUT) == "before the move"
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for key in source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            source.client().migrate("127.0.0.1", target.port, key, 0, 5000)
        for node in (target, source, *(node for node in on_cluster.masters() if node not in (source, target))):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert on_cluster.master_of(channel) is target
        on_cluster.wait_subscribed(channel)  # on the new master
        assert source.client().execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 0
        assert publish(facility, "after the move", broadcast=True) == 1
        assert ws.recv(timeout=TIMEOUT) == "after the move"


def test_a_master_killed_mid_stream_fails_over_and_nothing_is_lost(on_cluster, recorded):
    """A publisher sends every 20 ms on a channel of one shard; its master is
    SIGKILLed, its replica promoted: the same socket goes on receiving, and
    what was published meanwhile comes from the history, once, in order."""
    from twisted_ws4redis.exceptions import RedisUnavailable

    facility = unique("cl-failover")
    channel = f"broadcast:{facility}"
    victim = on_cluster.master_of(channel)
    published: list[str] = []
    attempted: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def publisher() -> None:
        with override_settings(**HISTORY):
            for number in range(100000):
                if stop.is_set():
                    return
                text = f"m{number}"
                attempted.append(text)
                try:
                    publish(facility, text, broadcast=True)
                    published.append(text)
                except (RedisUnavailable, redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                    errors.append(f"{exc!r} {exc.__cause__!r}")
                time.sleep(0.02)

    with open_v2(recorded) as ws:
        ws.subscribe(facility)
        on_cluster.wait_subscribed(channel)
        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        received = [ws.message()["data"] for _ in range(10)]
        victim.kill()
        deadline = time.monotonic() + 30
        while on_cluster.master_of(channel) in (None, victim):
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.1)
        promoted = len(attempted)
        # Delivery resumes on this socket once the server subscribed on the promoted master.
        deadline = time.monotonic() + 30
        while int(received[-1][1:]) < promoted + 25:
            try:
                received.append(ws.message(timeout=1)["data"])
            except TimeoutError:
                assert time.monotonic() < deadline, (
                    f"delivery did not resume: got up to {received[-1]}, "
                    f"{len(published)} of {len(attempted)} published, "
                    f"the last {published[-1:]}; errors {sorted(set(errors))}"
                )
        stop.set()
        thread.join(10)
        while len(received) < len(published):
            received.append(ws.message(timeout=TIMEOUT)["data"])
        with pytest.raises(TimeoutError):
            ws.ws.recv(timeout=0.5)
    failed = [text for text in attempted if text not in set(published)]
    assert failed, "the publisher never saw the master down"
    # Every message published is received once, in order; none of the failed ones.
    assert received == published
    victim.start()  # back, as a replica of the promoted one


def test_two_workers_on_a_cluster_each_subscribe_on_every_shard(on_cluster, test_db):
    """--workers with a cluster: each worker's own subscriber per master, so a
    publish on any shard counts both workers and reaches the sockets of both."""
    from test_workers import sockets_on_both, wait_for_workers

    server = TwistdServer(on_cluster.url, test_db, args=("--workers=2",))
    try:
        pids = wait_for_workers(server, 2)
        warm_up(server)
        for facility in per_master(on_cluster, lambda f: f"broadcast:{f}"):
            with contextlib.ExitStack() as stack:
                held = sockets_on_both(server, pids, f"{facility}?subscribe-broadcast", stack, at_least=1)
                on_cluster.wait_subscribed(f"broadcast:{facility}", count=2)
                assert publish(facility, f"to both on {facility}", broadcast=True) == 2
                everyone = [ws for sockets in held.values() for ws in sockets]
                assert [ws.recv(timeout=TIMEOUT) for ws in everyone] == [f"to both on {facility}"] * len(everyone)
    finally:
        assert server.stop() == 0, server.log()
