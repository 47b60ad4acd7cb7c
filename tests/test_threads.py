"""Django's work for a handshake runs on the service's thread pool, never on
the reactor thread, and a logged-in user's lookup works there; a handshake
that needs no read at all (no session cookie, no hooks) is decided on the
reactor, without a thread round trip."""

import contextlib
import time

import pytest
from websockets.sync.client import connect

from conftest import login, unique
from test_hostile import busy_threads

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


@pytest.mark.parametrize("engine", ["db", "cache", "cached_db", "file", "signed_cookies"])
def test_a_handshake_without_a_session_cookie_is_decided_without_a_read(django_in_process, monkeypatch, engine):
    """What lets such a handshake be decided on the reactor (reads_nothing):
    with every Django session engine, authorize() loads no session and runs
    no query for it, and still names its channels."""
    from importlib import import_module

    from django.db import connection
    from django.test.utils import CaptureQueriesContext, override_settings

    from twisted_ws4redis.conf import get_settings
    from twisted_ws4redis.django_bridge import Handshake, authorize, reads_nothing

    store = import_module(f"django.contrib.sessions.backends.{engine}").SessionStore

    def refuse(*args, **kwargs):
        raise AssertionError("a session was loaded")

    monkeypatch.setattr(store, "load", refuse)
    handshake = Handshake(
        path="/ws/quick",
        query="subscribe-broadcast&subscribe-user&subscribe-session",
        headers={"host": "127.0.0.1", "cookie": "csrftoken=abc"},
    )
    with override_settings(SESSION_ENGINE=f"django.contrib.sessions.backends.{engine}"):
        settings = get_settings()
        assert reads_nothing(handshake, settings)
        with CaptureQueriesContext(connection) as queries:
            accepted = authorize(handshake, "quick", settings, bus=None)
    assert len(queries) == 0
    assert accepted.subscriber.subscribed == ["broadcast:quick"]
    assert accepted.session_digest is None
    assert accepted.username is None


def test_a_session_cookie_or_a_hook_sends_the_handshake_to_a_thread(django_in_process):
    from dataclasses import replace

    from django.test.utils import override_settings

    from twisted_ws4redis.conf import get_settings
    from twisted_ws4redis.django_bridge import Handshake, reads_nothing

    settings = get_settings()
    anonymous = Handshake(path="/ws/quick", query="subscribe-broadcast", headers={"host": "127.0.0.1"})
    assert reads_nothing(anonymous, settings)
    assert not reads_nothing(replace(anonymous, headers={"cookie": "sessionid=x"}), settings)
    assert not reads_nothing(anonymous, replace(settings, process_request=lambda request: None))
    assert not reads_nothing(anonymous, replace(settings, allowed_channels=lambda request, flags: flags))
    assert not reads_nothing(anonymous, replace(settings, subscriber=type("Mine", (settings.subscriber,), {})))
    with override_settings(SESSION_ENGINE="testproject.my_sessions"):  # a project's own engine may read
        assert not reads_nothing(anonymous, settings)


def test_an_anonymous_handshake_does_not_wait_for_django_s_threads(server, redis_client):
    """Django's ten threads are busy for two seconds: a handshake without a
    session cookie opens at once, one with a session cookie waits for a thread."""
    busy = busy_threads(server, 2)
    time.sleep(0.2)
    try:
        started = time.monotonic()
        with connect(server.ws_url(f"{unique('quick')}?subscribe-broadcast"), open_timeout=5):
            anonymous = time.monotonic() - started
        started = time.monotonic()
        with connect(
            server.ws_url(f"{unique('slow')}?subscribe-broadcast"),
            open_timeout=5,
            additional_headers={"Cookie": "sessionid=nosuchsession"},
        ):
            with_cookie = time.monotonic() - started
    finally:
        for sock in busy:
            sock.close()
    assert anonymous < 0.5, anonymous
    assert with_cookie > 1, with_cookie
