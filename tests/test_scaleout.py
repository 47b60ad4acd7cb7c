"""Several nodes as one service: two ``twistd ws4redis`` processes on one
Redis behind HAProxy, run with the configuration shipped in docs/deploy."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from conftest import TwistdServer, free_port, login, unique, wait_for_port, wait_subscribed
from twisted_ws4redis.server.embedded import EmbeddedRedis

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "haproxy.cfg"
TIMEOUT = 5
#: The health check's path in docs/deploy/haproxy.cfg.
HEALTH = {"WS4REDIS_HEALTH_URL": "/ws4redis/health"}

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"  # Debian package haproxy (.ci/run installs it)


class Proxy:
    def __init__(self, tmp_path: Path, nodes: list[TwistdServer]):
        self.port = free_port()
        text = CONFIG.read_text()
        text = text.replace("bind 127.0.0.1:8000", f"bind 127.0.0.1:{self.port}")
        for number, node in enumerate(nodes, 1):
            text = text.replace(f"127.0.0.1:800{number}", f"127.0.0.1:{node.port}")
        assert text.count("bind 127.0.0.1:") == 1
        assert "127.0.0.1:8001" not in text
        path = tmp_path / "haproxy.cfg"
        path.write_text(text)
        subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], check=True)
        self.log_path = tmp_path / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{path}"

    def http_url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Until HAProxy has logged ``text`` ``count`` times (its health checks' verdicts)."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"no {text!r} in HAProxy's log:\n{self.log()}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def cluster(tmp_path, redis_server, test_db):
    nodes = [TwistdServer(redis_server.url, test_db, HEALTH) for _ in range(2)]
    proxy = None
    try:
        proxy = Proxy(tmp_path, nodes)
        yield proxy, nodes
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes:
            node.stop()


def connections_on(node: TwistdServer, facility: str) -> int:
    return len(re.findall(rf"WSCONNECT /ws/{facility}\b", node.log()))


def counts_once_logged(nodes: list[TwistdServer], facility: str, expected: list[int]) -> list[int]:
    """The WSCONNECT lines per node, once they add up to ``expected``'s total
    (a node logs the line just after its 101, which the client may see first)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        counts = [connections_on(node, facility) for node in nodes]
        if sum(counts) >= sum(expected) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_one_publish_reaches_clients_on_every_node(cluster, redis_client):
    proxy, nodes = cluster
    facility = unique("cluster")
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(proxy.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT))
            for _ in range(6)
        ]
        # leastconn spread them: both nodes hold some.
        assert counts_once_logged(nodes, facility, [3, 3]) == [3, 3]
        wait_subscribed(redis_client, f"broadcast:{facility}", 2)  # one subscriber per node
        assert redis_client.publish(f"broadcast:{facility}", "to everybody, once") == 2
        for ws in sockets:
            assert ws.recv(timeout=TIMEOUT) == "to everybody, once"


def test_a_message_sent_on_one_node_reaches_the_other(cluster, redis_client):
    proxy, nodes = cluster
    facility = unique("across")
    path = f"{facility}?subscribe-broadcast&publish-broadcast"
    with (
        connect(proxy.ws_url(path), open_timeout=TIMEOUT) as first,
        connect(proxy.ws_url(path), open_timeout=TIMEOUT) as second,
    ):
        assert counts_once_logged(nodes, facility, [1, 1]) == [1, 1]
        wait_subscribed(redis_client, f"broadcast:{facility}", 2)
        first.send("from one node to the other")
        assert second.recv(timeout=TIMEOUT) == "from one node to the other"


def test_a_logged_in_client_is_known_on_any_node(cluster, redis_client):
    """Log in through the proxy (Django, on one node), then open user sockets
    that land on both nodes: both know the user from the shared session."""
    proxy, nodes = cluster
    facility = unique("anynode")
    cookie = login(proxy, "john")
    with (
        connect(
            proxy.ws_url(f"{facility}?subscribe-user"), additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
        ) as one,
        connect(
            proxy.ws_url(f"{facility}?subscribe-user"), additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
        ) as two,
    ):
        assert counts_once_logged(nodes, facility, [1, 1]) == [1, 1]
        wait_subscribed(redis_client, f"user:john:{facility}", 2)
        redis_client.publish(f"user:john:{facility}", "hello john, wherever you are")
        assert one.recv(timeout=TIMEOUT) == two.recv(timeout=TIMEOUT) == "hello john, wherever you are"


def test_a_client_reconnects_to_the_node_left_when_one_stops(cluster, redis_client):
    proxy, nodes = cluster
    facility = unique("failover")
    with connect(proxy.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
        counts = counts_once_logged(nodes, facility, [1])
        owner = nodes[counts.index(1)]
        owner.stop()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.close_code == 1001
    survivor = next(node for node in nodes if node is not owner)
    # Until its health check notices, HAProxy may still try the stopped node
    # once; a client simply tries again, as ws4redis.js does.
    deadline = time.monotonic() + 10
    while True:
        try:
            ws = connect(proxy.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT)
            break
        except (OSError, InvalidHandshake):  # refused, or HAProxy's 503
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with ws:
        assert counts_once_logged([survivor], facility, [1]) == [1]
        wait_subscribed(redis_client, f"broadcast:{facility}", 1)
        redis_client.publish(f"broadcast:{facility}", "still served")
        assert ws.recv(timeout=TIMEOUT) == "still served"


def node_pages(node: TwistdServer) -> int:
    """The page requests (``GET /``) in a node's access log."""
    return node.log().count('"GET / HTTP/1.1" 200')


def test_a_node_whose_redis_is_down_is_taken_out_and_comes_back(tmp_path, redis_server, redis_client, test_db):
    """node2 has a Redis of its own: stopped, its health check answers 503,
    HAProxy takes it out and sends every new websocket to node1, while node2
    goes on serving pages (they need no Redis); once that Redis is back,
    node2 is healthy again and takes new websockets."""
    own = EmbeddedRedis(port=free_port())
    own.start()
    nodes = [
        TwistdServer(redis_server.url, test_db, HEALTH),
        TwistdServer(f"redis://127.0.0.1:{own.port}/0", test_db, HEALTH),
    ]
    proxy = None
    try:
        proxy = Proxy(tmp_path, nodes)
        own.stop()
        proxy.wait_for("ws4redis/node2 is DOWN")
        facility = unique("healthy")
        path = f"{facility}?subscribe-broadcast"
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                stack.enter_context(connect(proxy.ws_url(path), open_timeout=TIMEOUT))
            assert counts_once_logged(nodes, facility, [4, 0]) == [4, 0]
            # Pages need no Redis: node2 stays in the pages' backend and serves its share.
            pages_before = node_pages(nodes[1])
            for _ in range(4):
                with urllib.request.urlopen(proxy.http_url("/"), timeout=TIMEOUT) as response:
                    assert response.status == 200
            assert node_pages(nodes[1]) > pages_before, "node2 served no page while its Redis was down"
            own = EmbeddedRedis(port=own.port)
            own.start()
            proxy.wait_for("ws4redis/node2 is UP")
            # leastconn: node1 holds the four, so the next ones go to node2.
            back = unique("back")
            for _ in range(2):
                stack.enter_context(connect(proxy.ws_url(f"{back}?subscribe-broadcast"), open_timeout=TIMEOUT))
            assert counts_once_logged(nodes, back, [0, 2]) == [0, 2]
        assert "ws4redis/node1 is DOWN" not in proxy.log()
        assert "django/node2 is DOWN" not in proxy.log(), "a Redis outage took pages out too"
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes:
            node.stop()
        own.stop()
