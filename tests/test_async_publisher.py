"""The async publisher: ``apublish_message`` and ``afetch_message`` from async
views served by the real twistd (a websocket receives), and in this process
under ``asyncio.run`` against the real test Redis, compared with the blocking API."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import pytest
import redis

from conftest import (
    TwistdServer,
    django_request,
    free_port,
    http_post_json,
    login,
    open_ws,
    unique,
    wait_for_port,
    wait_subscribed,
)
from test_sentinel import SERVICE, sentinel_cluster  # noqa: F401  (a fixture)
from test_tls import certificate  # noqa: F401  (a fixture)
from twisted_ws4redis.server.embedded import redis_server_binary

TIMEOUT = 5


def http_get_json(server: TwistdServer, path: str, cookie: str) -> dict:
    request = urllib.request.Request(server.http_url(path), headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def redis_clients(client: redis.Redis) -> tuple[int, int]:
    """(connected clients, connections received so far) as Redis counts them."""
    return client.info("clients")["connected_clients"], client.info("stats")["total_connections_received"]


# Through the real server: async views run by Django under WSGI ----------------


def test_an_async_view_publishes_to_a_websocket(server, redis_client):
    facility = unique("async-view")
    with open_ws(server, f"{facility}?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        answer = http_post_json(
            server, "/apublish/", {"facility": facility, "broadcast": True, "message": "from an async view"}
        )
        assert ws.recv(timeout=TIMEOUT) == "from an async view"
    assert answer == {"channels": [f"broadcast:{facility}"], "received": 1}


def test_an_async_view_publishes_to_self_of_a_logged_in_user(server, redis_client):
    """SELF read with Django's async APIs: a blocking read of the user or the
    session on the view's event loop would raise SynchronousOnlyOperation (500)."""
    cookie = login(server, "mary")
    key = dict(part.strip().split("=", 1) for part in cookie.split(";"))["sessionid"]
    facility = unique("async-self")
    expected = {
        "users": [f"user:mary:{facility}"],
        "groups": [f"group:chatusers:{facility}", f"group:staff:{facility}"],
        "sessions": [f"session:{key}:{facility}"],
    }
    with open_ws(server, f"{facility}?subscribe-user&subscribe-group&subscribe-session", cookie) as ws:
        for channel in itertools.chain.from_iterable(expected.values()):
            wait_subscribed(redis_client, channel)
        for audience, channels in expected.items():
            answer = http_post_json(
                server,
                "/apublish/",
                {"facility": facility, audience: ["SELF"], "message": f"to {audience}"},
                {"Cookie": cookie},
            )
            assert answer == {"channels": channels, "received": len(channels)}
            for _ in channels:
                assert ws.recv(timeout=TIMEOUT) == f"to {audience}"


def test_afetch_message_finds_what_fetch_message_finds(server, redis_client):
    cookie = login(server, "john")
    facility = unique("async-fetch")
    for audience, message in (("users", "for john"), ("groups", "for chatusers")):
        http_post_json(
            server,
            "/publish/",
            {"facility": facility, audience: ["SELF"], "message": message, "expire": 60},
            {"Cookie": cookie},
        )
    http_post_json(server, "/publish/", {"facility": facility, "broadcast": True, "message": "for all", "expire": 60})
    found = {}
    for audience in ("any", "session", "user", "group", "broadcast"):
        query = urllib.parse.urlencode({"facility": facility, "audience": audience})
        found[audience] = http_get_json(server, f"/fetch/?{query}", cookie)["message"]
        assert http_get_json(server, f"/afetch/?{query}", cookie)["message"] == found[audience]
    assert found == {
        "any": "for john",
        "session": None,
        "user": "for john",
        "group": "for chatusers",
        "broadcast": "for all",
    }


def test_many_async_requests_leave_no_redis_connection_behind(server, redis_client):
    """Under WSGI, asgiref's async_to_sync runs each async view in a new event
    loop (asyncio.run on a new thread): each request opens a connection on its
    loop, and the loop's end closes it."""
    count = 40
    facility = unique("async-leak")
    http_post_json(server, "/apublish/", {"facility": facility, "broadcast": True, "message": "warm-up"})
    connected, received = redis_clients(redis_client)
    for number in range(count):
        http_post_json(server, "/apublish/", {"facility": facility, "broadcast": True, "message": str(number)})
    deadline = time.monotonic() + TIMEOUT
    while (now := redis_clients(redis_client))[0] > connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert now[0] <= connected, f"{now[0] - connected} connection(s) left open after {count} requests"
    # This test's own client stays connected: the new connections are the views'.
    assert now[1] - received >= count, "a connection per request's event loop was expected"


def test_an_async_view_gets_redis_unavailable_promptly(test_db):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    server = TwistdServer(f"redis://127.0.0.1:{port}/0", test_db)
    try:
        urllib.request.urlopen(server.http_url("/"), timeout=20).close()  # Django imported
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_post_json(server, "/apublish/", {"facility": "down", "broadcast": True, "message": "lost"})
        elapsed = time.monotonic() - started
        assert refused.value.code == 503
        assert json.loads(refused.value.read()) == {"error": "RedisUnavailable"}
        assert elapsed < 2, f"{elapsed:.1f}s to find that Redis is down"
    finally:
        server.stop()


# In this process: asyncio.run, as asgiref does --------------------------------


@contextmanager
def redis_at(address):
    from twisted_ws4redis.conf import set_redis_override

    set_redis_override(address)
    try:
        yield
    finally:
        set_redis_override(None)


def middleware_request(session_key: str):
    """A request as Django's session and auth middleware leave it: nothing read
    yet (the user is lazy, the session not loaded)."""
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.COOKIES["sessionid"] = session_key
    SessionMiddleware(lambda request: None).process_request(request)
    AuthenticationMiddleware(lambda request: None).process_request(request)
    return request


@pytest.mark.usefixtures("django_in_process")
def test_self_is_read_with_async_apis_on_the_loop(redis_client):
    from django.core.exceptions import SynchronousOnlyOperation

    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import SELF, RedisMessage

    key = django_request("mary").session.session_key
    facility = unique("inproc-self")
    everyone = {"users": [SELF], "groups": [SELF], "sessions": [SELF]}

    async def publish():
        # The control: the blocking resolution, on the loop, is caught by Django.
        with pytest.raises(SynchronousOnlyOperation):
            _ = RedisPublisher(facility=facility, request=middleware_request(key), **everyone)._publishers
        publisher = RedisPublisher(facility=facility, request=middleware_request(key), **everyone)
        return await publisher.apublish_message(RedisMessage("hi"), expire=60), publisher._publishers

    received, channels = asyncio.run(publish())
    assert received == 0
    assert channels == [
        f"group:chatusers:{facility}",
        f"group:staff:{facility}",
        f"user:mary:{facility}",
        f"session:{key}:{facility}",
    ]
    assert [redis_client.get(channel) for channel in channels] == [b"hi"] * 4


@pytest.mark.usefixtures("django_in_process")
def test_async_and_blocking_calls_return_the_same(redis_client):
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import SELF, RedisMessage

    facility = unique("inproc-same")
    listener = redis_client.pubsub()
    listener.subscribe(f"broadcast:{facility}", f"user:john:{facility}")
    for _ in range(2):
        assert listener.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    request, anonymous = django_request("john"), django_request()
    audiences = [
        {"broadcast": True},
        {"users": [SELF], "broadcast": True},
        {"users": ["nobody"]},
        {"users": [SELF], "request": anonymous},
        {"sessions": [SELF], "groups": [SELF]},
    ]

    def blocking(message, expire):
        return [
            RedisPublisher(facility=facility, **{"request": request, **audience}).publish_message(
                RedisMessage(message), expire
            )
            for audience in audiences
        ]

    async def asynchronous(message, expire):
        return [
            await RedisPublisher(facility=facility, **{"request": request, **audience}).apublish_message(
                RedisMessage(message), expire
            )
            for audience in audiences
        ]

    assert blocking("sync", 60) == asyncio.run(asynchronous("async", 60)) == [1, 2, 0, 0, 0]
    assert blocking("sync", 0) == asyncio.run(asynchronous("async", 0)) == [1, 2, 0, 0, 0]
    listener.close()

    redis_client.flushall()
    RedisPublisher(facility=facility, users=[SELF], request=request).publish_message(RedisMessage("u"), 60)
    RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("b"), 60)
    fetcher = RedisPublisher()
    for who in (request, anonymous):
        for audience in ("any", "session", "user", "group", "broadcast"):
            assert fetcher.fetch_message(who, facility, audience) == asyncio.run(
                fetcher.afetch_message(who, facility, audience)
            )
    assert fetcher.fetch_message(request, facility) == b"u"
    assert fetcher.fetch_message(anonymous, facility) == b"b"

    with pytest.raises(ValueError, match="audience must be one of"):
        asyncio.run(fetcher.afetch_message(request, facility, "everyone"))
    with pytest.raises(ValueError, match="message must be a RedisMessage"):
        asyncio.run(RedisPublisher(facility=facility, broadcast=True).apublish_message("not a RedisMessage"))


@pytest.mark.usefixtures("django_in_process")
def test_async_calls_raise_redis_unavailable_promptly():
    from twisted_ws4redis.exceptions import RedisUnavailable
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_address import RedisAddress
    from twisted_ws4redis.redis_store import RedisMessage

    closed = free_port()
    mute = socket.socket()  # accepts connections (the backlog), never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    try:
        for address, error in (
            (RedisAddress(host="127.0.0.1", port=closed), "Connect"),
            (RedisAddress(host="127.0.0.1", port=mute.getsockname()[1], socket_timeout=0.5), "Timeout"),
        ):
            with redis_at(address):
                publisher = RedisPublisher(facility="down", broadcast=True)
                started = time.monotonic()
                with pytest.raises(RedisUnavailable, match=error):
                    asyncio.run(publisher.apublish_message(RedisMessage("lost")))
                with pytest.raises(RedisUnavailable, match=error):
                    asyncio.run(publisher.afetch_message(None, "down", "broadcast"))
                assert time.monotonic() - started < 3
    finally:
        mute.close()


@pytest.fixture
def tls_redis(tmp_path, certificate, monkeypatch):  # noqa: F811
    """A redis-server speaking TLS only, its certificate trusted by this process."""
    key, cert = certificate
    port = free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    try:
        wait_for_port(port, process=process)
        yield port
    finally:
        process.kill()
        process.wait()


@pytest.mark.usefixtures("django_in_process")
def test_every_kind_of_address_works_both_ways(redis_server, tls_redis, sentinel_cluster):  # noqa: F811
    """TCP, UNIX socket, TLS and Sentinel, each through the blocking and the
    asyncio client built from the same options."""
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_address import RedisAddress
    from twisted_ws4redis.redis_store import RedisMessage

    master = sentinel_cluster[0]
    kinds = {
        "tcp": RedisAddress.from_url(redis_server.url),
        "unix": RedisAddress.from_url(f"unix://{redis_server.embedded.socket_path}"),
        "tls": RedisAddress.from_url(f"rediss://localhost:{tls_redis}/0"),
        "sentinel": RedisAddress.from_url(f"redis+sentinel://127.0.0.1:{sentinel_cluster[2].port}/{SERVICE}"),
    }
    for kind, address in kinds.items():
        facility = unique(kind)
        with redis_at(address):
            publisher = RedisPublisher(facility=facility, broadcast=True)
            assert publisher.publish_message(RedisMessage(f"{kind} sync"), expire=60) == 0
            # Connections now open, the blocking pool's included (it stays open).
            counted = [address.redis_py_client()] + ([sentinel_cluster[2].client()] if kind == "sentinel" else [])
            before = [client.info("clients")["connected_clients"] for client in counted]
            assert asyncio.run(publisher.afetch_message(None, facility, "broadcast")) == f"{kind} sync".encode()
            assert asyncio.run(publisher.apublish_message(RedisMessage(f"{kind} async"), expire=60)) == 0
            assert publisher.fetch_message(None, facility, "broadcast") == f"{kind} async".encode()
            deadline = time.monotonic() + TIMEOUT
            while any(
                client.info("clients")["connected_clients"] > count
                for client, count in zip(counted, before, strict=True)
            ):
                assert time.monotonic() < deadline, f"{kind}: the asyncio client's connections stayed open"
                time.sleep(0.02)
            for client in counted:
                client.close()
    assert master.client().get(f"broadcast:{facility}") == b"sentinel async"


@pytest.mark.usefixtures("django_in_process")
def test_one_event_loop_reuses_one_connection_and_closes_it_at_its_end(redis_client):
    """What an ASGI server's long-lived loop gets: one pool for all its publishers."""
    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    facility = unique("one-loop")
    # Connection ids, not counts: connections of earlier tests' servers may close meanwhile.
    first = redis_client.client_id()

    def opened_since() -> list[int]:
        return [int(client["id"]) for client in redis_client.client_list() if int(client["id"]) > first]

    async def publish_many():
        for number in range(20):
            await RedisPublisher(facility=facility, broadcast=True).apublish_message(RedisMessage(str(number)))
        return opened_since()

    during = asyncio.run(publish_many())
    assert len(during) == 1, f"20 publications on one loop, one connection: {during}"
    deadline = time.monotonic() + TIMEOUT
    while during[0] in opened_since() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert during[0] not in opened_since(), "the loop's end closed its connection"
