"""Faults the server survives: clients that stop reading or vanish, a stop
while requests are being answered, Redis going away under the publisher."""

from __future__ import annotations

import signal
import socket
import threading
import time
import urllib.request

import psutil
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import TwistdServer, free_port, unique, wait_subscribed
from test_hostile import RawSocket

TIMEOUT = 5


# -- slow and dead clients ------------------------------------------------------------


def test_a_client_that_stops_reading_is_closed_and_memory_stays_bounded(twistd_servers, redis_client):
    """50 MB are broadcast while one subscriber reads nothing: the server
    closes that one (1008, logged) instead of buffering for it, the other
    subscriber gets every message, and the server's memory stays bounded."""
    server = twistd_servers({"WS4REDIS_MAX_BUFFERED_BYTES": 2 * 1024 * 1024})
    facility = unique("slow")
    channel = f"broadcast:{facility}"
    process = psutil.Process(server.process.pid)
    stalled = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT, max_size=None) as reader:
            wait_subscribed(redis_client, channel)
            rss_before = process.memory_info().rss
            rss_peak = rss_before
            chunk = 100 * 1024
            for batch in range(50):  # 50 x 10 x 100 KiB
                for i in range(10):
                    redis_client.publish(channel, f"{batch:02d}{i}".encode() + b"x" * (chunk - 3))
                for i in range(10):
                    message = reader.recv(timeout=TIMEOUT)
                    assert message[:3] == f"{batch:02d}{i}".encode() or message[:3] == f"{batch:02d}{i}"
                rss_peak = max(rss_peak, process.memory_info().rss)
        growth_mib = (rss_peak - rss_before) / 2**20
        assert growth_mib < 20, f"server grew by {growth_mib:.1f} MiB"
        log = server.log()
        assert "WSPOLICY" in log
        assert "WS4REDIS_MAX_BUFFERED_BYTES" in log
        # The stalled client finds, once it reads again, the close frame after what it got.
        stalled.sock.settimeout(10)
        try:
            code = stalled.close_code()
        except (ConnectionError, OSError):
            code = None  # dropped after the close handshake timed out: also a close
        assert code in (1008, None)
    finally:
        stalled.close()


def test_a_peer_that_answers_no_ping_is_dropped(twistd_servers, redis_client):
    server = twistd_servers({"WS4REDIS_AUTO_PING_INTERVAL": 0.5, "WS4REDIS_AUTO_PING_TIMEOUT": 1})
    facility = unique("ping")
    silent = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    try:
        with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as alive:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            assert silent.read_frame()[0] == 0x9  # a ping, left unanswered
            started = time.monotonic()
            with pytest.raises((ConnectionError, OSError)):
                while True:
                    silent.read_frame()
            assert time.monotonic() - started < 2.5
            time.sleep(2)  # several pings: the live client answers them all
            redis_client.publish(f"broadcast:{facility}", "still with you")
            assert alive.recv(timeout=TIMEOUT) == "still with you"
            gone = [line for line in server.log().splitlines() if "WSDISCONNECT" in line and facility in line]
            assert len(gone) == 1
            assert "code=1006" in gone[0]  # the silent one, dropped
            assert "WSDEAD" in server.log()
    finally:
        silent.close()


# -- graceful stop ---------------------------------------------------------------------


def test_sigterm_lets_a_request_being_answered_finish(redis_server, redis_client, test_db):
    server = TwistdServer(redis_server.url, test_db, args=("--grace=10",))
    answer: dict = {}

    def slow_request() -> None:
        with urllib.request.urlopen(server.http_url("/slow/?seconds=2"), timeout=15) as response:
            answer["status"], answer["body"] = response.status, response.read()

    try:
        with connect(server.ws_url("stop?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
            wait_subscribed(redis_client, "broadcast:stop")
            client = threading.Thread(target=slow_request)
            client.start()
            time.sleep(0.5)  # the view is sleeping now
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001
            client.join(15)
        assert answer == {"status": 200, "body": b"slow and done"}
        assert server.process.wait(15) == 0
        # Nobody new got in while it was stopping.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    finally:
        server.stop()


def test_the_grace_period_ends(redis_server, test_db):
    """Past --grace the stop goes on; the late view still completes its answer."""
    server = TwistdServer(redis_server.url, test_db, args=("--grace=0.5",))
    answer: dict = {}

    def slow_request() -> None:
        with urllib.request.urlopen(server.http_url("/slow/?seconds=3"), timeout=15) as response:
            answer["body"] = response.read()

    client = threading.Thread(target=slow_request)
    try:
        client.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
        client.join(15)
        assert "unfinished after 0.5 s" in server.log()
        assert answer == {"body": b"slow and done"}
        # The process lives as long as the view's thread, not longer.
        assert time.monotonic() - started < 6
    finally:
        server.stop()


# -- Redis away --------------------------------------------------------------------------


@pytest.fixture
def private_redis():
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    instance = EmbeddedRedis(port=free_port())
    instance.start()
    yield instance
    instance.stop()


def test_after_a_long_outage_the_server_is_back_within_the_capped_delay(private_redis, test_db):
    """Redis away for 7 s: the subscriber's attempts back off exponentially
    (0.5 s, 1.4 s, 3.7 s…) but never wait more than RECONNECT_MAX_DELAY (5 s),
    so it is subscribed again a few seconds after Redis returns (txredisapi's
    own cap, 10 s, would take about 9), and the open websocket receives.
    Meanwhile the outage is one warning naming the address and the error, a
    new websocket is refused with 503 and pages are still served."""
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    server = TwistdServer(f"redis://127.0.0.1:{private_redis.port}/0", test_db)
    facility = unique("outage")
    channel = f"broadcast:{facility}"
    address = f"redis://127.0.0.1:{private_redis.port}/0"
    try:
        with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
            wait_subscribed(private_redis_client(private_redis), channel)
            private_redis.stop()
            outage = time.monotonic()
            wait_for_log(server, f"Redis at {address} is unreachable: ")
            with pytest.raises(InvalidStatus) as refused:
                connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT)
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "10"
            with urllib.request.urlopen(server.http_url("/"), timeout=TIMEOUT) as page:
                assert page.status == 200
            time.sleep(max(0.0, 7 - (time.monotonic() - outage)))
            back = EmbeddedRedis(port=private_redis.port)
            back.start()
            try:
                returned = time.monotonic()
                client = private_redis_client(back)
                wait_subscribed(client, channel, timeout=15)
                # 5 s at most between attempts, plus the reconnect itself on a busy machine.
                assert time.monotonic() - returned < 7.5
                client.publish(channel, "after a long outage")
                assert ws.recv(timeout=TIMEOUT) == "after a long outage"
                log = wait_for_log(server, f"Redis at {address} is reachable again")
                unreachable = [line for line in log.splitlines() if "is unreachable: " in line]
                assert len(unreachable) == 1, "one warning per outage, not one per attempt"
                assert "#warn]" in unreachable[0]
                assert "Connection refused" in unreachable[0]
                with connect(server.ws_url(f"{facility}?subscribe-broadcast"), open_timeout=TIMEOUT) as again:
                    assert again.response.status_code == 101
            finally:
                back.stop()
    finally:
        server.stop()


def wait_for_log(server: TwistdServer, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{server.log()}"
        time.sleep(0.05)
    return server.log()


def private_redis_client(instance) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=instance.port, socket_timeout=TIMEOUT)


@pytest.mark.usefixtures("django_in_process")
def test_the_publisher_raises_redis_unavailable_while_redis_is_down(private_redis):
    from twisted_ws4redis.conf import set_redis_override
    from twisted_ws4redis.exceptions import RedisUnavailable
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_address import RedisAddress
    from twisted_ws4redis.redis_store import RedisMessage
    from twisted_ws4redis.server.embedded import EmbeddedRedis

    set_redis_override(RedisAddress(host="127.0.0.1", port=private_redis.port))
    try:
        publisher = RedisPublisher(facility=unique("down"), broadcast=True)
        assert publisher.publish_message(RedisMessage("up"), expire=0) == 0
        private_redis.stop()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="Redis is unavailable") as raised:
            publisher.publish_message(RedisMessage("down"), expire=0)
        assert isinstance(raised.value, redis.ConnectionError)
        with pytest.raises(RedisUnavailable):
            RedisPublisher(facility="x").fetch_message(None, "x", "broadcast")
        assert time.monotonic() - started < 2, "no hang while Redis is down"
        back = EmbeddedRedis(port=private_redis.port)
        back.start()
        try:
            assert publisher.publish_message(RedisMessage("back"), expire=60) == 0
            assert redis.Redis(port=back.port).get(publisher._publishers[0]) == b"back"
        finally:
            back.stop()
    finally:
        set_redis_override(None)


@pytest.mark.usefixtures("django_in_process")
def test_the_publisher_times_out_on_a_redis_that_does_not_answer():
    """A Redis that accepts connections but never answers (hung, or a
    black-holed address): RedisUnavailable after socket_timeout, no hang."""
    from twisted_ws4redis.conf import set_redis_override
    from twisted_ws4redis.exceptions import RedisUnavailable
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_address import RedisAddress
    from twisted_ws4redis.redis_store import RedisMessage

    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    set_redis_override(RedisAddress(host="127.0.0.1", port=mute.getsockname()[1], socket_timeout=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="Timeout"):
            RedisPublisher(facility="mute", broadcast=True).publish_message(RedisMessage("hello?"))
        assert time.monotonic() - started < 3
    finally:
        set_redis_override(None)
        mute.close()


@pytest.mark.parametrize(
    ("credentials", "error"), [("", "NOAUTH"), (":wrong@", "WRONGPASS")], ids=["no-password", "wrong-password"]
)
def test_a_redis_that_refuses_the_server_is_an_outage(private_redis, test_db, credentials, error):
    """Redis answers but refuses us (a password missing or wrong): one warning
    with Redis' own reason, websockets refused with 503, pages served; with the
    password gone again, the server is subscribed and accepts websockets."""
    client = private_redis_client(private_redis)
    client.config_set("requirepass", "s3cret")
    address = f"redis://127.0.0.1:{private_redis.port}/0"
    server = TwistdServer(f"redis://{credentials}127.0.0.1:{private_redis.port}/0", test_db)
    try:
        log = wait_for_log(server, f"Redis at {address} is unreachable: ")
        [warning] = [line for line in log.splitlines() if "is unreachable: " in line]
        assert "#warn]" in warning
        assert error in warning
        assert "s3cret" not in log
        assert "wrong" not in warning
        with pytest.raises(InvalidStatus) as refused:
            connect(server.ws_url("refused?subscribe-broadcast"), open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 503
        with urllib.request.urlopen(server.http_url("/"), timeout=TIMEOUT) as page:
            assert page.status == 200
        if credentials:
            return  # txredisapi gives up after a refused AUTH: the settings must change
        client.config_set("requirepass", "")
        wait_for_log(server, f"Redis at {address} is reachable again")
        with connect(server.ws_url("refused?subscribe-broadcast"), open_timeout=TIMEOUT) as ws:
            assert ws.response.status_code == 101
        log = server.log()
        assert len([line for line in log.splitlines() if "is unreachable: " in line]) == 1
        assert "connection lost" not in log
    finally:
        server.stop()


def test_a_channel_that_redis_acl_denies_costs_only_its_websocket(private_redis, test_db):
    """Redis ACLs may deny some channels (``NOPERM``): a client whose facility
    names one costs no other websocket (it is not an outage of the server),
    also after the subscriber reconnected."""
    client = private_redis_client(private_redis)
    client.execute_command("ACL", "SETUSER", "default", "resetchannels", "&ws4redis:*", "&broadcast:allowed-*")
    server = TwistdServer(f"redis://127.0.0.1:{private_redis.port}/0", test_db)
    try:
        allowed = unique("allowed")
        with (
            connect(server.ws_url("denied?subscribe-broadcast"), open_timeout=TIMEOUT),
            connect(server.ws_url(f"{allowed}?subscribe-broadcast"), open_timeout=TIMEOUT) as ws,
        ):
            wait_subscribed(client, f"broadcast:{allowed}")
            client.publish(f"broadcast:{allowed}", "still served")
            assert ws.recv(timeout=TIMEOUT) == "still served"
            with connect(server.ws_url(f"{allowed}?subscribe-broadcast"), open_timeout=TIMEOUT) as again:
                assert again.response.status_code == 101
            log = server.log()
            assert "is unreachable" not in log
            assert "connection lost" not in log
            assert "Redis refused a subscription: NOPERM" in log
            # Subscribed again after a reconnection, every channel at once: one
            # SUBSCRIBE naming them all would be refused whole, for the denied one.
            client.client_kill_filter(_type="pubsub")
            deadline = time.monotonic() + 15
            while server.log().count("Redis subscriber connected") < 2:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            wait_subscribed(client, f"broadcast:{allowed}")
            client.publish(f"broadcast:{allowed}", "still served after the reconnection")
            assert ws.recv(timeout=TIMEOUT) == "still served after the reconnection"
    finally:
        server.stop()
