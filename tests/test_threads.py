"""Django's work for a handshake runs on the service's thread pool, never on
the reactor thread, and a logged-in user's lookup works there."""
import contextlib
import time

from websockets.sync.client import connect

from conftest import login

OFF_REACTOR = {
    "WS4REDIS_PROCESS_REQUEST": "testproject.thread_hooks.process_request_off_reactor",
    "WS4REDIS_ALLOWED_CHANNELS": "testproject.thread_hooks.allowed_channels_off_reactor",
}


def test_hooks_run_on_a_pool_thread(twistd_servers, redis_client):
    server = twistd_servers(OFF_REACTOR)
    cookie = login(server, "john")
    with connect(server.ws_url("threads?subscribe-user"), additional_headers={"Cookie": cookie}) as ws:
        deadline = time.monotonic() + 5
        while redis_client.publish("user:john:threads", "for john") < 1:
            assert time.monotonic() < deadline, "john's channel was never subscribed"
            time.sleep(0.02)
        assert ws.recv(timeout=5) == "for john"
    assert "ran on the reactor thread" not in server.log()


def test_many_handshakes_at_once_all_complete(twistd_servers, redis_client):
    """Thirty sockets opened back to back on the thread-checking hooks all open
    and all receive a broadcast."""
    server = twistd_servers(OFF_REACTOR)
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(server.ws_url("many?subscribe-broadcast"))) for _ in range(30)]
        deadline = time.monotonic() + 5
        while redis_client.publish("broadcast:many", "to all") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert [ws.recv(timeout=5) for ws in sockets] == ["to all"] * 30
