"""The shortest path through the product: a twistd process, a websocket, Redis."""

import urllib.request

from websockets.sync.client import connect

from conftest import login


def test_broadcast_from_redis_reaches_subscriber(server, redis_client):
    with connect(server.ws_url("foobar?subscribe-broadcast")) as ws:
        # the subscription is confirmed before the handshake's persisted-message step
        deadline_ok = False
        for _ in range(50):
            if redis_client.publish("broadcast:foobar", "hello") == 1:
                deadline_ok = True
                break
            import time

            time.sleep(0.05)
        assert deadline_ok
        assert ws.recv(timeout=5) == "hello"


def test_django_is_served_on_the_same_port(server):
    with urllib.request.urlopen(server.http_url("/"), timeout=5) as response:
        assert response.read() == b"testproject"


def test_login_sets_session_cookie(server):
    cookie = login(server, "john")
    assert cookie.startswith("sessionid=")
