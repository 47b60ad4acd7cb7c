"""Presence (issue 13): who is connected to a facility, across nodes. Real
Redis, real ``twistd ws4redis`` nodes on it, real websocket clients; the
Django side (``present``, ``apresent``) is read in this process.

Two nodes (A and B) serve the module; the tests that kill or stop a node
start one of their own. Every test uses its own facility. Absence of an event
is proved by ordering: events of a facility reach a subscriber in the order
Redis got them, so a later event arriving first proves the other never came.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
import time

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import PROJECT, RedisServer, TwistdServer, free_port, login, open_ws, project_env, unique, warm_up
from test_logout import log_out
from test_v2 import V2, Client

TIMEOUT = 5
TTL = 3
PRESENCE = {"WS4REDIS_PRESENCE": True, "WS4REDIS_PRESENCE_TTL": TTL}
#: The nodes': facility_allowed_channels drops "presence" on facilities named
#: 'nopresence-…'; a short history, for a subscribe with both since and presence.
NODE = {
    **PRESENCE,
    "WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.facility_allowed_channels",
    "WS4REDIS_HISTORY_SIZE": 10,
}
NOBODY = {"users": [], "anonymous": 0, "connections": 0}


# -- helpers -------------------------------------------------------------------------


class Watcher(Client):
    """A ws4redis.v2 socket that keeps, in order, the join/leave ops it reads
    while waiting for a reply (``event()`` hands them out)."""

    def __init__(self, ws):
        super().__init__(ws)
        self.events: collections.deque[dict] = collections.deque()
        #: facilities watched so far
        self.watched: set[str] = set()

    def reply(self, ref) -> dict:
        while True:
            frame = self.recv()
            if frame.get("op") in ("join", "leave"):
                self.events.append(frame)
            elif frame.get("op") == "message":
                self.inbox.append(frame)
            else:
                assert frame.get("ref") == ref, f"expected the reply to ref {ref!r}, got {frame}"
                return frame

    def event(self, timeout: float = TIMEOUT) -> dict:
        frame = self.events.popleft() if self.events else self.recv(timeout)
        assert frame.get("op") in ("join", "leave"), f"expected a presence event, got {frame}"
        return frame

    def watch(self, facility: str, audience: str = "broadcast") -> dict:
        """Subscribes with presence; the state the reply carries (the first
        time, no event of the facility comes before it)."""
        waiting = len(self.events)
        reply = self.subscribe(facility, audience, presence=True)
        assert set(reply["presence"]) == {"users", "anonymous", "connections"}, reply
        if facility not in self.watched:
            early = [op for op in list(self.events)[waiting:] if op["facility"] == facility]
            assert not early, f"events before the state they follow: {early}"
            self.watched.add(facility)
        return reply["presence"]


def open_v2(server: TwistdServer, path: str = "", cookie: str | None = None) -> Watcher:
    ws = connect(
        server.ws_url(path),
        subprotocols=[V2],
        additional_headers={"Cookie": cookie} if cookie else None,
        open_timeout=TIMEOUT,
    )
    assert ws.subprotocol == V2
    return Watcher(ws)


def join(facility: str, user: str) -> dict:
    return {"op": "join", "facility": facility, "user": user}


def leave(facility: str, user: str) -> dict:
    return {"op": "leave", "facility": facility, "user": user}


def by_user(*events: dict) -> list[dict]:
    """Events of users on different sockets, whose order is not defined."""
    return sorted(events, key=lambda op: op["user"])


def state(users: list[str], anonymous: int, connections: int) -> dict:
    return {"users": users, "anonymous": anonymous, "connections": connections}


def present(facility: str, **settings) -> dict:
    """``presence.present`` in this process, configured as the nodes are."""
    from django.test import override_settings

    from twisted_ws4redis import presence

    with override_settings(**PRESENCE, **settings):
        return presence.present(facility)


def wait_present(facility: str, expected: dict, timeout: float = TIMEOUT, **settings) -> None:
    deadline = time.monotonic() + timeout
    while (seen := present(facility, **settings)) != expected:
        assert time.monotonic() < deadline, f"present({facility!r}) is {seen}, not {expected}, after {timeout}s"
        time.sleep(0.02)


def node_keys(client: redis.Redis, facility: str) -> set[bytes]:
    return set(client.scan_iter(match=f"ws4redis:presence:{{{facility}}}:node:*"))


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(twistd_servers, redis_server, test_db, django_in_process):
    """Nodes A and B: two processes with the same settings on one Redis."""
    a = twistd_servers(NODE)
    b = TwistdServer(redis_server.url, test_db, NODE)
    try:
        warm_up(b)
        yield a, b
    finally:
        b.stop()


@pytest.fixture
def spare(redis_server, test_db, django_in_process):
    """``spare(ttl)``: a third node, for a test to kill or stop."""
    started = []

    def start(ttl: int = TTL) -> TwistdServer:
        started.append(TwistdServer(redis_server.url, test_db, {**NODE, "WS4REDIS_PRESENCE_TTL": ttl}))
        warm_up(started[-1])
        return started[-1]

    yield start
    for node in started:
        node.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def cookies(nodes) -> dict[str, str]:
    """A session per test user (sessions are in the database both nodes read)."""
    return {name: login(nodes[0], name) for name in ("john", "mary", "ann", "admin")}


@pytest.fixture
def rc(redis_server):
    """The test Redis, not flushed (as redis_client is) under the module's nodes."""
    client = redis_server.client()
    yield client
    client.close()


# -- present() -----------------------------------------------------------------------


def test_nobody_is_present_on_a_facility_never_used(nodes):
    assert present(unique("never")) == NOBODY


def test_anonymous_sockets_are_counted_and_go_as_they_close(nodes):
    """Whatever they listen to: a plain socket that only publishes is
    connected to its facility, a v2 one by its (empty) user audience."""
    a, _ = nodes
    facility = unique("anon")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(open_ws(a, f"{facility}?subscribe-broadcast"))
        stack.enter_context(open_ws(a, f"{facility}?publish-broadcast"))
        stack.enter_context(open_v2(a)).subscribe(facility, "user")
        wait_present(facility, state([], 3, 3))
        first.close()
        wait_present(facility, state([], 2, 2))
    wait_present(facility, NOBODY)


def test_users_sockets_on_two_nodes_and_both_wires(nodes, cookies):
    """john twice (a plain socket on A, a v2 one on B), mary on B, an
    anonymous socket on A: one name per user, every socket a connection."""
    a, b = nodes
    facility = unique("mixed")
    path = f"{facility}?subscribe-broadcast"
    with contextlib.ExitStack() as stack:
        john_plain = stack.enter_context(open_ws(a, path, cookies["john"]))
        john_v2 = stack.enter_context(open_v2(b, path, cookies["john"]))
        assert john_v2.recv()["op"] == "subscribed"
        mary = stack.enter_context(open_ws(b, path, cookies["mary"]))
        anonymous = stack.enter_context(open_ws(a, path))
        wait_present(facility, state(["john", "mary"], 1, 4))
        john_plain.close()
        wait_present(facility, state(["john", "mary"], 1, 3))
        john_v2.ws.close()
        wait_present(facility, state(["mary"], 1, 2))
        anonymous.close()
        wait_present(facility, state(["mary"], 0, 1))
        mary.close()
        wait_present(facility, NOBODY)


def test_a_v2_socket_counts_once_per_facility_while_it_holds_a_subscription(nodes, cookies):
    a, _ = nodes
    facility, other = unique("v2-count"), unique("v2-other")
    with open_v2(a, "", cookies["ann"]) as ws:
        ws.subscribe(other)
        wait_present(other, state(["ann"], 0, 1))
        assert present(facility) == NOBODY  # a socket counts only where it subscribed
        ws.subscribe(facility)
        ws.subscribe(facility, "user")
        wait_present(facility, state(["ann"], 0, 1))
        ws.unsubscribe(facility)
        third = unique("v2-third")
        ws.subscribe(third)  # the node's presence writes after the unsubscribe's:
        wait_present(third, state(["ann"], 0, 1))
        assert present(facility) == state(["ann"], 0, 1)
        ws.unsubscribe(facility, "user")
        wait_present(facility, NOBODY)
        assert present(other) == state(["ann"], 0, 1)


def test_apresent_equals_present(nodes, cookies):
    from django.test import override_settings

    from twisted_ws4redis import presence

    a, b = nodes
    facility = unique("async")
    path = f"{facility}?subscribe-broadcast"
    with open_ws(a, path, cookies["mary"]), open_ws(b, path, cookies["john"]), open_ws(b, path):
        wait_present(facility, state(["john", "mary"], 1, 3))
        with override_settings(**PRESENCE):
            assert asyncio.run(presence.apresent(facility)) == presence.present(facility)
            assert asyncio.run(presence.apresent(unique("async-none"))) == NOBODY


def test_present_and_apresent_raise_redis_unavailable(django_in_process):
    from django.test import override_settings

    from twisted_ws4redis import presence
    from twisted_ws4redis.exceptions import RedisUnavailable

    closed = {"WS4REDIS_CONNECTION": {"host": "127.0.0.1", "port": free_port(), "db": 0}}
    with pytest.raises(RedisUnavailable):
        present("down", **closed)
    with override_settings(**PRESENCE, **closed), pytest.raises(RedisUnavailable):
        asyncio.run(presence.apresent("down"))


# -- join and leave ------------------------------------------------------------------


def test_join_and_leave_across_nodes(nodes, cookies):
    """Watched on A; john comes on B: one join for his first socket, none for
    a second one on B nor a third on A; no leave until his last one closes.
    mary is the marker that nothing came in between."""
    a, b = nodes
    facility = unique("events")
    path = f"{facility}?subscribe-broadcast"

    def mary_comes_and_goes() -> None:
        with open_ws(b, path, cookies["mary"]):
            assert watcher.event() == join(facility, "mary")
        assert watcher.event() == leave(facility, "mary")

    with open_v2(a) as watcher, contextlib.ExitStack() as stack:
        assert watcher.watch(facility) == state([], 1, 1)  # this socket included
        first = stack.enter_context(open_ws(b, path, cookies["john"]))
        assert watcher.event() == join(facility, "john")
        second = stack.enter_context(open_v2(b, path, cookies["john"]))
        assert second.recv()["op"] == "subscribed"
        last = stack.enter_context(open_ws(a, path, cookies["john"]))
        wait_present(facility, state(["john"], 1, 4))
        mary_comes_and_goes()  # no second join of john
        second.ws.close()
        first.close()
        wait_present(facility, state(["john"], 1, 2))
        mary_comes_and_goes()  # john is still on A: no leave
        last.close()
        assert watcher.event() == leave(facility, "john")
        wait_present(facility, state([], 1, 1))


def test_the_subscribed_reply_carries_the_state_and_the_own_join_arrives(nodes, cookies):
    a, b = nodes
    facility = unique("state")
    path = f"{facility}?subscribe-broadcast"
    with open_ws(b, path, cookies["john"]), open_ws(a, path), open_ws(b, path):
        wait_present(facility, state(["john"], 2, 3))
        with open_v2(a, "", cookies["mary"]) as watcher:
            assert watcher.watch(facility) == state(["john", "mary"], 2, 4)  # this socket included
            assert watcher.event() == join(facility, "mary")


def test_a_recovering_subscribe_carries_the_state_too(nodes, cookies):
    a, b = nodes
    facility = unique("since")
    with open_v2(b, "", cookies["john"]) as john:
        john.subscribe(facility)
        since = john.publish(facility, "one")
        john.publish(facility, "two")
        with open_v2(a, "", cookies["mary"]) as mary:
            reply = mary.subscribe(facility, since=since, presence=True)
            assert (reply["recovered"], reply["presence"]) == (True, state(["john", "mary"], 0, 2)), reply
            frames = sorted((mary.recv(), mary.recv()), key=lambda op: op["op"])  # their order is not defined
            assert frames[0] == join(facility, "mary")
            assert (frames[1]["op"], frames[1]["data"]) == ("message", "two"), frames[1]


def test_an_unsubscribe_of_a_v2_users_last_subscription_is_a_leave(nodes, cookies):
    a, b = nodes
    facility = unique("unsub")
    with open_v2(a) as watcher, open_v2(b, "", cookies["ann"]) as ann:
        watcher.watch(facility)
        ann.subscribe(facility)
        assert watcher.event() == join(facility, "ann")
        ann.subscribe(facility, "user")
        ann.unsubscribe(facility)
        ann.unsubscribe(facility, "user")
        assert watcher.event() == leave(facility, "ann")  # no join between: the second subscription made none
        wait_present(facility, state([], 1, 1))


def test_anonymous_sockets_cause_no_events(nodes, cookies):
    a, b = nodes
    facility = unique("quiet")
    path = f"{facility}?subscribe-broadcast"
    with open_v2(a) as watcher:
        watcher.watch(facility)
        with open_ws(b, path), open_v2(b, path) as anonymous_v2:
            assert anonymous_v2.recv()["op"] == "subscribed"
            wait_present(facility, state([], 3, 3))
        wait_present(facility, state([], 1, 1))
        with open_ws(b, path, cookies["john"]):
            assert watcher.event() == join(facility, "john")


def test_several_presence_subscriptions_on_a_facility_get_each_event_once(nodes, cookies):
    """Events are per facility: the watcher's broadcast and user subscriptions
    give one join per user."""
    a, b = nodes
    facility = unique("once")
    path = f"{facility}?subscribe-broadcast"
    with open_v2(a, "", cookies["mary"]) as watcher:
        watcher.watch(facility)
        assert watcher.event() == join(facility, "mary")
        watcher.watch(facility, "user")
        with open_ws(b, path, cookies["john"]):
            assert watcher.event() == join(facility, "john")
        assert watcher.event() == leave(facility, "john")  # not a second join of john
        with open_ws(b, path, cookies["ann"]):
            assert watcher.event() == join(facility, "ann")  # not a second leave of john


def test_unsubscribing_stops_the_events(nodes, cookies):
    a, b = nodes
    facility, marker = unique("stop"), unique("stop-marker")
    with open_v2(a) as watcher:
        watcher.watch(facility)
        watcher.unsubscribe(facility)
        watcher.watch(marker)
        with open_ws(b, f"{facility}?subscribe-broadcast", cookies["john"]):
            wait_present(facility, state(["john"], 0, 1))
            with open_ws(b, f"{marker}?subscribe-broadcast", cookies["ann"]):
                assert watcher.event() == join(marker, "ann")


def test_subscribing_a_pair_again_is_neither_a_leave_nor_a_join(nodes, cookies):
    """A v2 subscription replaced (the wire's rule for a pair subscribed
    again), with and without presence: ann stays connected throughout."""
    a, b = nodes
    facility = unique("again")
    with open_v2(a) as watcher, open_v2(b, "", cookies["ann"]) as ann:
        watcher.watch(facility)
        ann.watch(facility)
        assert watcher.event() == join(facility, "ann")
        assert ann.event() == join(facility, "ann")
        assert ann.watch(facility) == state(["ann"], 1, 2)
        ann.subscribe(facility)
        with open_ws(b, f"{facility}?subscribe-broadcast", cookies["john"]):
            assert watcher.event() == join(facility, "john")  # not a leave of ann


def test_a_name_beyond_ascii_is_given_as_it_is(nodes, test_db):
    """Django allows letters of any script in a user name."""
    a, b = nodes
    name = "zoë_Łukasz@例"
    code = (
        "from django.contrib.auth.models import User; "
        f"User.objects.filter(username={name!r}).exists() or User.objects.create_user({name!r}, password='secret')"
    )
    subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code], env=project_env(test_db), check=True, cwd=PROJECT
    )
    facility = unique("unicode")
    with open_v2(a) as watcher:
        watcher.watch(facility)
        with open_ws(b, f"{facility}?subscribe-broadcast", login(a, name)):
            assert watcher.event() == join(facility, name)
            assert present(facility) == state([name], 1, 2)
        assert watcher.event() == leave(facility, name)


def test_a_logout_that_closes_the_sockets_is_a_leave(nodes):
    """Django's logout() on A closes the session's socket on B: john leaves."""
    a, b = nodes
    facility = unique("logout")
    cookie = login(a, "john")  # a session of its own: the module's stay
    with open_v2(a) as watcher:
        watcher.watch(facility)
        with open_ws(b, f"{facility}?subscribe-broadcast", cookie) as ws:
            assert watcher.event() == join(facility, "john")
            log_out(a, cookie)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert watcher.event() == leave(facility, "john")


def test_entries_lost_by_redis_are_written_again(nodes, cookies, rc):
    """Redis loses everything (FLUSHALL, as a restart without persistence):
    the nodes' next refresh brings their sockets back."""
    a, b = nodes
    facility = unique("lost")
    path = f"{facility}?subscribe-broadcast"
    with open_ws(a, path, cookies["john"]), open_ws(b, path):
        wait_present(facility, state(["john"], 1, 2))
        rc.flushall()
        assert present(facility) == NOBODY
        wait_present(facility, state(["john"], 1, 2), timeout=TTL + 1)


# -- refusals ------------------------------------------------------------------------


def test_presence_asked_of_a_node_without_it_is_a_400(twistd_servers, rc):
    facility = unique("off")
    with open_v2(twistd_servers()) as ws:
        error = ws.call("subscribe", facility=facility, audience="broadcast", presence=True)
        assert (error["op"], error["code"]) == ("error", 400), error
        assert "WS4REDIS_PRESENCE" in error["reason"], error
        ws.subscribe(unique("off-after"))  # the socket stays open, and the refused subscription was not made:
        assert rc.publish(f"broadcast:{facility}", "to nobody") == 0


@pytest.mark.parametrize("value", ["true", 1, [True], {}], ids=["text", "one", "list", "object"])
def test_presence_not_a_bool_is_a_400(nodes, rc, value):
    a, _ = nodes
    facility = unique("notbool")
    with open_v2(a) as ws:
        error = ws.call("subscribe", facility=facility, audience="broadcast", presence=value)
        assert (error["op"], error["code"]) == ("error", 400), error
        ws.subscribe(unique("notbool-after"))
        assert rc.publish(f"broadcast:{facility}", "to nobody") == 0


@pytest.mark.parametrize("value", [False, None], ids=["false", "null"])
def test_presence_false_or_null_is_a_plain_subscription(nodes, value):
    """null means absent, as for since."""
    a, _ = nodes
    facility = unique("false")
    with open_v2(a) as ws:
        reply = ws.subscribe(facility, presence=value)
        assert "presence" not in reply, reply
        wait_present(facility, state([], 1, 1))


def test_allowed_channels_dropping_presence_is_a_403(nodes, cookies):
    refused, allowed = unique("nopresence"), unique("presence-ok")
    with open_v2(nodes[0], "", cookies["john"]) as ws:
        error = ws.call("subscribe", facility=refused, audience="broadcast", presence=True)
        assert (error["op"], error["code"]) == ("error", 403), error
        ws.subscribe(refused)  # without presence, the facility is open to john
        assert ws.watch(allowed) == state(["john"], 0, 1)
        assert ws.event() == join(allowed, "john")


# -- nodes that die or stop ----------------------------------------------------------


def test_a_killed_nodes_users_leave_within_its_ttl(nodes, spare, cookies, rc):
    """Three users on the node killed: ann only there leaves (gone from
    present() within its TTL, a leave from A); john, also on A, and mary, who
    reconnects to A while the dead node still counts, stay without an event.
    admin, after, is the marker that none came."""
    ttl = 5  # the time mary has to reconnect, and more
    a, _ = nodes
    doomed = spare(ttl)
    facility = unique("killed")
    path = f"{facility}?subscribe-broadcast"
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(open_v2(a))
        watcher.watch(facility)
        stack.enter_context(open_ws(a, path, cookies["john"]))
        assert watcher.event() == join(facility, "john")
        on_doomed = [stack.enter_context(open_ws(doomed, path, cookies[name])) for name in ("ann", "john", "mary")]
        assert by_user(watcher.event(), watcher.event()) == [join(facility, "ann"), join(facility, "mary")]
        wait_present(facility, state(["ann", "john", "mary"], 1, 5))
        assert len(node_keys(rc, facility)) == 2
        doomed.process.kill()
        doomed.process.wait()
        stack.enter_context(open_ws(a, path, cookies["mary"]))
        wait_present(facility, state(["ann", "john", "mary"], 1, 6))  # mary's socket on A counted...
        # ...while the dead node's still counted: not her first socket, so no join
        wait_present(facility, state(["john", "mary"], 1, 3), timeout=ttl + 1)
        assert watcher.event(timeout=TIMEOUT) == leave(facility, "ann")
        with open_ws(a, path, cookies["admin"]):
            assert watcher.event() == join(facility, "admin")  # no event of john or mary came first
        deadline = time.monotonic() + TIMEOUT
        while len(node_keys(rc, facility)) != 1:  # the dead node's hash is deleted, A's stays
            assert time.monotonic() < deadline, node_keys(rc, facility)
            time.sleep(0.05)
        for ws in on_doomed:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)


def test_a_stopped_node_publishes_its_users_leaves_before_it_exits(nodes, spare, cookies):
    """SIGTERM: the node's sockets close (1001) and its users' leaves are
    out before the process ends: present() no longer has them at once. (Its
    long TTL: had it left them to expire, they would still count.)"""
    a, _ = nodes
    doomed = spare(ttl=30)
    facility = unique("stopped")
    path = f"{facility}?subscribe-broadcast"
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(open_v2(a))
        watcher.watch(facility)
        john = stack.enter_context(open_ws(doomed, path, cookies["john"]))
        mary = stack.enter_context(open_v2(doomed, path, cookies["mary"]))
        assert mary.recv()["op"] == "subscribed"
        assert by_user(watcher.event(), watcher.event()) == [join(facility, "john"), join(facility, "mary")]
        assert doomed.stop(signal.SIGTERM) == 0
        assert present(facility) == state([], 1, 1)
        assert by_user(watcher.event(), watcher.event()) == [leave(facility, "john"), leave(facility, "mary")]
        for ws in (john, mary.ws):
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1001


# -- presence off --------------------------------------------------------------------


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_presence_keys_only_when_on_and_under_the_prefix(test_db, django_in_process, on):
    """A node on a Redis of its own, with sockets of both wires. Off (the
    default): not one presence key. On, the same steps: keys, all under
    WS4REDIS_PREFIX, where present() finds the sockets (and only there)."""
    overrides = {"WS4REDIS_PREFIX": "pfx", "WS4REDIS_PRESENCE_TTL": 1, **({"WS4REDIS_PRESENCE": True} if on else {})}
    store = RedisServer()
    client = store.client()
    node = None
    try:
        node = TwistdServer(store.url, test_db, overrides)
        warm_up(node)
        reading = {"WS4REDIS_CONNECTION": {"host": "127.0.0.1", "port": store.port, "db": 0}}
        facility = unique("keys")
        cookie = login(node, "john")
        path = f"{facility}?subscribe-broadcast"
        with open_ws(node, path, cookie) as plain, open_ws(node, path), open_v2(node, "", cookie) as v2:
            v2.subscribe(facility)
            v2.publish(facility, "round trip")  # the node has handled both opens and the subscribe
            assert plain.recv(timeout=TIMEOUT) == "round trip"
            assert v2.message()["data"] == "round trip"
            if on:
                wait_present(facility, state(["john"], 1, 3), WS4REDIS_PREFIX="pfx", **reading)
                assert present(facility, **reading) == NOBODY
                keys = {key.decode() for key in client.scan_iter(match="*presence*")}
                assert keys, keys
                assert all(key.startswith(f"pfx:ws4redis:presence:{{{facility}}}") for key in keys), keys
            else:
                deadline = time.monotonic() + 1.0  # three refreshes (TTL/3), had presence been on
                while time.monotonic() < deadline:
                    assert not list(client.scan_iter(match="*presence*"))
                    time.sleep(0.05)
                assert present(facility, WS4REDIS_PREFIX="pfx", **reading) == NOBODY
    finally:
        client.close()
        if node is not None:
            node.stop()
        store.stop()
