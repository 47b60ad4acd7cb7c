"""What the session lets a websocket have, and for how long: a session channel
only for a session that really loaded (whatever SESSION_ENGINE), and group
channels from the login-time snapshot unless the groups are read at handshake
time."""

from __future__ import annotations

import sqlite3
import urllib.request

import pytest
from websockets.sync.client import connect

from conftest import django_request, http_post_json, login, round_trip, session_key, unique, wait_subscribed

TIMEOUT = 5
SIGNED = {"SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies"}
ENGINES = {"db": None, "signed_cookies": SIGNED}
CURRENT_GROUPS = {"WS4REDIS_PROCESS_REQUEST": "twisted_ws4redis.django_bridge.process_request_with_current_groups"}


def anonymous_session(server) -> str:
    """The Cookie of an anonymous visitor whose empty session a view saved."""
    with urllib.request.urlopen(server.http_url("/session/"), timeout=TIMEOUT) as response:
        cookies = [value.split(";", 1)[0] for name, value in response.getheaders() if name.lower() == "set-cookie"]
    (cookie,) = cookies
    return cookie


def wsconnect_line(server, facility: str) -> str:
    (line,) = [line for line in server.log().splitlines() if f"WSCONNECT /ws/{facility}?" in line]
    return line


def channels_on(redis_client, facility: str) -> list[str]:
    return sorted(name.decode() for name in redis_client.pubsub_channels(f"*{facility}*"))


def published_channels(server, facility: str, cookie: str) -> list[str]:
    """What RedisPublisher(sessions=[SELF], request=request) names in a view."""
    reply = http_post_json(
        server, "/publish/", {"facility": facility, "message": "m", "sessions": ["SELF"]}, headers={"Cookie": cookie}
    )
    return reply["channels"]


# -- session channels ------------------------------------------------------------------


def forged_cookies(server) -> dict[str, str]:
    genuine = session_key(login(server, "john"))
    return {
        "made up": "sessionid=attacker-chosen-name-0123456789",
        "signature tampered": "sessionid=" + genuine[:-1] + ("A" if genuine[-1] != "A" else "B"),
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_a_forged_session_cookie_gets_no_session_channel(twistd_servers, redis_client, engine):
    server = twistd_servers(ENGINES[engine])
    for what, cookie in forged_cookies(server).items():
        facility = unique("forged")
        with connect(
            server.ws_url(f"{facility}?subscribe-session&publish-session&subscribe-broadcast"),
            additional_headers={"Cookie": cookie},
            open_timeout=TIMEOUT,
        ) as ws:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            round_trip(ws)
            assert channels_on(redis_client, facility) == [f"broadcast:{facility}"], what
        assert f"subscribe=['broadcast:{facility}'] publish=[]" in wsconnect_line(server, facility), what
        assert published_channels(server, facility, cookie) == [], what


@pytest.mark.parametrize("engine", ENGINES)
def test_a_genuine_session_keeps_its_channel(twistd_servers, redis_client, engine):
    """A logged-in user's session, and an anonymous visitor's empty one that a view saved."""
    server = twistd_servers(ENGINES[engine])
    for cookie in (login(server, "mary"), anonymous_session(server)):
        key = session_key(cookie)
        facility = unique("genuine")
        channel = f"session:{key}:{facility}"
        with connect(
            server.ws_url(f"{facility}?subscribe-session&publish-session"),
            additional_headers={"Cookie": cookie},
            open_timeout=TIMEOUT,
        ):
            wait_subscribed(redis_client, channel)
            assert published_channels(server, facility, cookie) == [channel]


# -- group channels ------------------------------------------------------------------


@pytest.fixture
def member(test_db):
    """A new user (password 'secret') in a new group: (username, group, remove())."""
    username, group = unique("leaver"), unique("club")
    with sqlite3.connect(test_db) as db:
        db.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, "
            "is_staff, is_active, date_joined) SELECT password, 0, ?, '', '', '', 0, 1, date_joined "
            "FROM auth_user WHERE username = 'john'",
            (username,),
        )
        db.execute("INSERT INTO auth_group (name) VALUES (?)", (group,))
        db.execute(
            "INSERT INTO auth_user_groups (user_id, group_id) SELECT auth_user.id, auth_group.id "
            "FROM auth_user, auth_group WHERE auth_user.username = ? AND auth_group.name = ?",
            (username, group),
        )

    def remove() -> None:
        with sqlite3.connect(test_db) as db:
            db.execute(
                "DELETE FROM auth_user_groups WHERE group_id = (SELECT id FROM auth_group WHERE name = ?)", (group,)
            )

    return username, group, remove


def group_channels_after_removal(server, redis_client, member) -> tuple[str, list[str]]:
    """Log in as a member, see its group channel, remove it from the group:
    the facility of a new websocket of the same session, and the group
    channels it subscribed."""
    username, group, remove = member
    cookie = login(server, username)
    before = unique("before")
    with connect(
        server.ws_url(f"{before}?subscribe-group"), additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
    ):
        wait_subscribed(redis_client, f"group:{group}:{before}")
    remove()
    after = unique("after")
    with connect(
        server.ws_url(f"{after}?subscribe-group&subscribe-broadcast"),
        additional_headers={"Cookie": cookie},
        open_timeout=TIMEOUT,
    ) as ws:
        wait_subscribed(redis_client, f"broadcast:{after}")
        round_trip(ws)
        return after, [name for name in channels_on(redis_client, after) if name.startswith("group:")]


def test_by_default_groups_are_those_stored_at_login(twistd_servers, redis_client, member):
    """Documented: the names are a snapshot, kept until the next login."""
    _, group, _ = member
    facility, channels = group_channels_after_removal(twistd_servers(), redis_client, member)
    assert channels == [f"group:{group}:{facility}"]


def test_groups_read_at_handshake_time_follow_the_database(twistd_servers, redis_client, member):
    _, channels = group_channels_after_removal(twistd_servers(CURRENT_GROUPS), redis_client, member)
    assert channels == []


def test_the_handshake_reads_the_session_once(django_in_process, monkeypatch):
    """process_request notes what its load found, so naming the session
    channel costs no second read of the session store."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.handlers.wsgi import WSGIRequest

    from twisted_ws4redis.audience import resolve_self
    from twisted_ws4redis.django_bridge import Handshake, process_request

    key = django_request("john").session.session_key
    loads = []
    load = SessionStore.load
    monkeypatch.setattr(SessionStore, "load", lambda store: loads.append(store.session_key) or load(store))
    for cookie, expected in ((key, [key]), ("forgedforgedforgedforged", [])):
        loads.clear()
        request = WSGIRequest(Handshake(path="/ws/x", query="", headers={"cookie": f"sessionid={cookie}"}).environ())
        process_request(request)
        assert resolve_self("session", request) == expected
        assert loads == [cookie]


@pytest.mark.parametrize("engine", ["db", "cache", "cached_db", "file", "signed_cookies"])
def test_every_engine_vouches_only_for_its_own_sessions(django_in_process, engine):
    """The rule behind session channels, for each of Django's engines: a
    saved (even empty) session is genuine, a made-up key is not."""
    from importlib import import_module

    from twisted_ws4redis.audience import genuine_session_key

    store = import_module(f"django.contrib.sessions.backends.{engine}").SessionStore
    saved = store()
    saved.save()
    try:
        assert genuine_session_key(store(saved.session_key)) == saved.session_key
        assert genuine_session_key(store("madeupmadeupmadeupmadeup")) is None
    finally:
        saved.delete()
