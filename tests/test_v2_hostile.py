"""Hostile ws4redis.v2 clients cost only themselves: too many subscriptions
(429, and no more Redis channels than WS4REDIS_MAX_SUBSCRIPTIONS), op floods
from a client that reads nothing (one op at a time, reading paused, closed past
WS4REDIS_MAX_BUFFERED_BYTES), hostile JSON (an error op, the socket open,
nothing in the log), a recovery replay to a client that does not read (closed
past the cap, not held whole), what a socket keeps (publish grants, replaced
subscriptions, ops pending when it goes), payloads forged as the history's
envelope. Each attack runs against a real server, with a raw socket, while its
memory or another client's service is measured."""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time

import psutil
import pytest
from websockets.sync.client import connect

from conftest import unique, wait_subscribed
from test_hostile import RawSocket
from test_write_path import MIB, NO_FRAME_LIMITS, Flood, policy_lines, wait_for_policy_line
from twisted_ws4redis import history
from twisted_ws4redis.server.v2 import MAX_REF_DEPTH

TIMEOUT = 5
V2 = "Sec-WebSocket-Protocol: ws4redis.v2\r\n"
SMALL_CAP = {**NO_FRAME_LIMITS, "WS4REDIS_MAX_BUFFERED_BYTES": 32 * 1024}


class V2Socket(RawSocket):
    """A raw websocket speaking ws4redis.v2: JSON ops in text frames."""

    def __init__(self, port: int, path: str, *, receive_buffer: int | None = None):
        super().__init__(port, path, extra=V2)
        if receive_buffer is not None:
            # Set after the handshake, before any op: what the kernel holds for
            # a client that does not read, so that the server's cap is met soon.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)

    def send_op(self, op: dict | str) -> None:
        self.sock.sendall(op_frame(op))

    def read_op(self) -> dict:
        while True:
            opcode, payload = self.read_frame()
            assert opcode in (0x1, 0x9), (opcode, payload[:200])
            if opcode == 0x1:
                return json.loads(payload)


def op_frame(op: dict | str) -> bytes:
    """A text frame of ``op`` (lone surrogates kept, as a hostile client may
    send them), masked with a zero key: valid, and cheap for floods."""
    payload = (op if isinstance(op, str) else json.dumps(op)).encode("utf-8", "surrogatepass")
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return header + b"\0\0\0\0" + payload


def v2_client(server, path: str):
    return connect(server.ws_url(path), subprotocols=["ws4redis.v2"], open_timeout=TIMEOUT)


def ask(ws, op: dict) -> dict:
    """Send ``op`` on a websockets client, the reply to it (past messages)."""
    ws.send(json.dumps(op))
    while (reply := json.loads(ws.recv(timeout=TIMEOUT)))["op"] == "message":
        pass
    return reply


def rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


def replies_and_growth(server, ws: V2Socket, ops: list[dict]) -> tuple[list[dict], float]:
    """Send ``ops`` in one go while reading their replies: the replies, and
    how many MiB the server grew meanwhile."""
    before = rss(server)
    sender = threading.Thread(target=ws.sock.sendall, args=(b"".join(op_frame(op) for op in ops),))
    sender.start()
    replies = [ws.read_op() for _ in ops]
    sender.join(TIMEOUT)
    return replies, (rss(server) - before) / MIB


def channels_of(redis_client, facility_prefix: str) -> list[bytes]:
    return redis_client.pubsub_channels(f"*{facility_prefix}*")


def assert_log_clean(server) -> None:
    """Nothing a client sent made the server log a traceback."""
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Unhandled Error" not in log, log[-3000:]


# -- 1. WS4REDIS_MAX_SUBSCRIPTIONS ---------------------------------------------------------

CAP = 20
MAX_CONNECTIONS = 8
#: A small cap, a hook that counts its calls and is slow when told (testproject.hooks), few websockets.
SUBSCRIPTION_CAP = {
    **NO_FRAME_LIMITS,
    "WS4REDIS_MAX_SUBSCRIPTIONS": CAP,
    "WS4REDIS_MAX_CONNECTIONS": MAX_CONNECTIONS,
    "WS4REDIS_ALLOWED_CHANNELS": "testproject.hooks.probing_allowed_channels",
}


def facility(tag: str, n: int) -> str:
    """A distinct facility of 128 characters (the most the default pattern allows)."""
    return f"{tag}-{n:06d}-".ljust(128, "f")


def test_subscriptions_past_the_cap_get_429_and_no_redis_channel(twistd_servers, redis_client):
    """A client asks for 5000 subscriptions (distinct facilities of 128
    characters, refs of 1 KiB) in one go, while it reads the replies: the
    first CAP (the URL's one among them) are subscribed, every other gets 429,
    Redis has CAP channels for it, and the server did not grow by half of
    what it was sent (6 MiB of ops; keeping their bytes would be more than the
    bound): each refused op was answered and forgotten."""
    server = twistd_servers(SUBSCRIPTION_CAP)
    tag = unique("cap")
    count = 5000
    ws = V2Socket(server.port, f"/ws/{tag}-url?subscribe-broadcast")
    try:
        assert ws.read_op()["op"] == "subscribed"
        before = rss(server)
        ops = b"".join(
            op_frame({"op": "subscribe", "facility": facility(tag, n), "audience": "broadcast", "ref": [n, "r" * 1024]})
            for n in range(count)
        )
        sender = threading.Thread(target=ws.sock.sendall, args=(ops,))
        sender.start()
        replies = [ws.read_op() for _ in range(count)]
        sender.join(TIMEOUT)
        growth = (rss(server) - before) / MIB
        assert [reply["ref"][0] for reply in replies] == list(range(count))  # in order, each answered once
        assert [reply["op"] for reply in replies[: CAP - 1]] == ["subscribed"] * (CAP - 1)
        refused = replies[CAP - 1 :]
        assert all(reply["op"] == "error" and reply["code"] == 429 for reply in refused), refused[:3]
        assert "WS4REDIS_MAX_SUBSCRIPTIONS" in refused[0]["reason"]
        held = channels_of(redis_client, tag)
        assert len(held) == CAP, held
        assert growth < 3, f"server grew by {growth:.1f} MiB"
        # A replacement is not a new subscription; an unsubscribe frees a place.
        first = {"facility": facility(tag, 0), "audience": "broadcast"}
        ws.send_op({"op": "subscribe", **first, "ref": "again"})
        assert ws.read_op()["op"] == "subscribed"
        ws.send_op({"op": "unsubscribe", **first})
        assert ws.read_op()["op"] == "unsubscribed"
        ws.send_op({"op": "subscribe", "facility": f"{tag}-last", "audience": "broadcast"})
        assert ws.read_op()["op"] == "subscribed"
        assert len(channels_of(redis_client, tag)) == CAP
    finally:
        ws.close()
    deadline = time.monotonic() + TIMEOUT
    while channels_of(redis_client, tag):
        assert time.monotonic() < deadline, "the closed socket's channels are still subscribed"
        time.sleep(0.05)


# -- 3. hostile JSON -----------------------------------------------------------------------

PAIR = '"facility":"json","audience":"broadcast"'
HOSTILE_OPS = {
    "nested arrays as the op": "[" * 100_000 + "]" * 100_000,
    "nested objects as the op": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "nested arrays as ref": '{"op":"subscribe",' + PAIR + ',"ref":' + "[" * 50_000 + "]" * 50_000 + "}",
    "an infinite ref": '{"op":"unsubscribe",' + PAIR + ',"ref":1e999}',
    "a NaN ref": '{"op":"unsubscribe",' + PAIR + ',"ref":NaN}',
    "a number of 5000 digits": '{"op":"unsubscribe",' + PAIR + ',"ref":' + "9" * 5000 + "}",
    "a lone surrogate in data": '{"op":"publish",' + PAIR + ',"data":"\\ud800"}',
    "a lone surrogate in ref": '{"op":"unsubscribe",' + PAIR + ',"ref":"\\udfff"}',
    "a lone surrogate in the facility": '{"op":"unsubscribe","facility":"a\\ud800","audience":"broadcast"}',
    "a lone surrogate in the facility of a subscribe": '{"op":"subscribe","facility":"\\ud800","audience":"broadcast"}',
    "a lone surrogate in the facility of a publish": '{"op":"publish","facility":"\\udbff","audience":"broadcast",'
    '"data":"x"}',
    "data_b64 not base64": '{"op":"publish",' + PAIR + ',"data_b64":"%%%"}',
    "data_b64 not ASCII": '{"op":"publish",' + PAIR + ',"data_b64":"\\u00e9\\u00e9=="}',
    "data_b64 a list": '{"op":"publish",' + PAIR + ',"data_b64":["QUJD"]}',
    "data_b64 a number": '{"op":"publish",' + PAIR + ',"data_b64":1e999}',
    "data a dict": '{"op":"publish",' + PAIR + ',"data":{"a":1}}',
    "facility a list": '{"op":"subscribe","facility":["json"],"audience":"broadcast"}',
    "facility a dict": '{"op":"unsubscribe","facility":{"json":1},"audience":"broadcast"}',
    "facility a huge number": '{"op":"subscribe","facility":1e999,"audience":"broadcast"}',
    "facility null": '{"op":"publish","facility":null,"audience":"broadcast","data":"x"}',
    "audience a list": '{"op":"subscribe","facility":"json","audience":["broadcast"]}',
    "audience a number": '{"op":"unsubscribe","facility":"json","audience":-0}',
    "since a huge number": '{"op":"subscribe",' + PAIR + ',"since":1e999}',
    "since too big an id": '{"op":"subscribe",' + PAIR + ',"since":"99999999999999999999999-0"}',
    "since a list": '{"op":"subscribe",' + PAIR + ',"since":["1-0"]}',
    "op a list": '{"op":["subscribe"],' + PAIR + "}",
    "duplicate keys": '{"op":"subscribe","op":"explode",' + PAIR + "}",
    "not JSON": "{'op': 'subscribe'}",
    "an escape sequence as the op": '{"op":"\\u001b[2J\\u2028\\u202e",' + PAIR + "}",
}


def test_hostile_json_gets_400_and_the_socket_stays_open(twistd_servers, redis_client):
    """Each op a hostile client may write gets an error op with code 400 on
    the same socket, which then still works; the server logs no traceback."""
    server = twistd_servers()
    ws = V2Socket(server.port, "/ws/?publish-broadcast")
    try:
        for name, text in HOSTILE_OPS.items():
            ws.send_op(text)
            reply = ws.read_op()
            assert reply["op"] == "error", (name, reply)
            assert reply["code"] == 400, (name, reply)
        ws.send_op({"op": "subscribe", "facility": "json", "audience": "broadcast", "ref": "alive"})
        assert ws.read_op() == {"op": "subscribed", "facility": "json", "audience": "broadcast", "ref": "alive"}
    finally:
        ws.close()
    assert_log_clean(server)


def test_a_ref_at_any_depth_is_answered(twistd_servers, redis_client):
    """Python's recursion limit meets JSON nesting somewhere below 1000
    levels, at a depth that depends on the server's stack (where a reply
    encoding the ref raised, and the op went unanswered): a ref nesting up to
    MAX_REF_DEPTH levels is echoed, a deeper one refused with 400, at every
    depth on to past that limit, on the same socket; no traceback."""
    server = twistd_servers(NO_FRAME_LIMITS)
    ws = V2Socket(server.port, "/ws/")
    try:
        for depth in [*range(1, 40), *range(900, 1010)]:
            ref = "[" * depth + "]" * depth
            op = '{"op":"subscribe","facility":"deep","audience":"broadcast","ref":' + ref + "}"
            for text in (op, op.replace('"subscribe"', '"explode"')):
                ws.send_op(text)
                reply = ws.read_op()
                if depth <= MAX_REF_DEPTH:
                    assert reply["op"] == ("subscribed" if text is op else "error"), (depth, reply)
                    assert reply["ref"] == json.loads(ref), depth
                else:
                    assert (reply["op"], reply["code"], reply["ref"]) == ("error", 400, None), depth
        ws.send_op({"op": "unsubscribe", "facility": "deep", "audience": "broadcast", "ref": "alive"})
        assert ws.read_op()["ref"] == "alive"
    finally:
        ws.close()
    assert_log_clean(server)


def test_replies_keep_the_order_of_the_ops(twistd_servers, redis_client):
    """A publish (its grant cached from the URL) and an unsubscribe sent
    together: the replies come in that order. The publish waits for Redis,
    so the server must not read (or answer) the unsubscribe meanwhile."""
    server = twistd_servers()
    tag = unique("order")
    ws = V2Socket(server.port, f"/ws/{tag}?publish-broadcast")
    try:
        ops = []
        for n in range(50):
            ops += [
                {"op": "publish", "facility": tag, "audience": "broadcast", "data": "x", "ref": f"p{n}"},
                {"op": "unsubscribe", "facility": tag, "audience": "broadcast", "ref": f"u{n}"},
            ]
        ws.sock.sendall(b"".join(op_frame(op) for op in ops))
        replies = [ws.read_op() for _ in ops]
        assert [reply["ref"] for reply in replies] == [op["ref"] for op in ops]
        assert [reply["op"] for reply in replies[:2]] == ["published", "unsubscribed"]
    finally:
        ws.close()


# -- 4. a recovery replay to a client that does not read ---------------------------------

HISTORY = {**SMALL_CAP, "WS4REDIS_HISTORY_SIZE": 40}


def record(redis_client, channel: str, payload: bytes, size: int) -> str:
    """Publish ``payload`` on ``channel`` as the server does with the history on; its id."""
    return redis_client.eval(
        history.PUBLISH_SCRIPT, 3, *history.publish_keys(channel, ""), *history.publish_args(payload, 0, size, 3600)
    )[1].decode()


def test_a_replay_to_a_client_that_does_not_read_is_cut_at_the_cap(twistd_servers, redis_client):
    """40 recorded messages of 512 KiB (20 MiB) replayed to a client that
    reads nothing: the server writes what the kernel takes, then refuses the
    rest past WS4REDIS_MAX_BUFFERED_BYTES (1008) at once, rather than keeping
    the whole replay for the client (until a ping found it slow). Once it has
    closed the socket it holds less than 5 MiB more than before (keeping the
    replay would be 20 MiB, less what the kernel took)."""
    server = twistd_servers(HISTORY)
    tag = unique("replay")
    channel = f"broadcast:{tag}"
    ids = [record(redis_client, channel, b"%02d" % n + b"r" * (512 * 1024), 40) for n in range(40)]
    ws = V2Socket(server.port, f"/ws/{tag}", receive_buffer=16 * 1024)
    before = rss(server)
    try:
        ws.send_op({"op": "subscribe", "facility": tag, "audience": "broadcast", "since": ids[0]})
        line = wait_for_policy_line(server, tag)
        assert "WS4REDIS_MAX_BUFFERED_BYTES" in line
        # The replay passed through memory (Redis' reply, the frames): given back once written or dropped.
        deadline = time.monotonic() + TIMEOUT
        while (growth := (rss(server) - before) / MIB) >= 5:
            assert time.monotonic() < deadline, f"the server holds {growth:.1f} MiB more"
            time.sleep(0.05)
        ws.sock.settimeout(TIMEOUT)
        frames = []
        while (frame := ws.read_frame())[0] != 0x8:
            frames.append(frame)
        assert json.loads(frames[0][1])["recovered"] is True
        replayed = [json.loads(payload)["data"][:2] for _, payload in frames[1:]]
        assert 1 <= len(replayed) < 39, len(replayed)
        assert replayed == [f"{n:02d}" for n in range(1, 1 + len(replayed))]
    finally:
        ws.close()


def test_since_the_greatest_id_is_not_recovered(twistd_servers, redis_client):
    """``since`` at the greatest id there is (which Redis refuses as the
    start of a range): later than anything recorded, so not recovered (no
    message is kept here), then live ones; no 500 and no traceback (a client repeating
    it would have filled the log)."""
    server = twistd_servers(HISTORY)
    tag = unique("greatest")
    record(redis_client, f"broadcast:{tag}", b"kept", 40)
    greatest = f"{2**64 - 1}-{2**64 - 1}"
    with v2_client(server, f"{tag}?publish-broadcast") as ws:
        reply = ask(ws, {"op": "subscribe", "facility": tag, "audience": "broadcast", "since": greatest})
        assert reply == {"op": "subscribed", "facility": tag, "audience": "broadcast", "ref": None, "recovered": False}
        ws.send(json.dumps({"op": "publish", "facility": tag, "audience": "broadcast", "data": "live"}))
        assert {json.loads(ws.recv(timeout=TIMEOUT))["op"] for _ in range(2)} == {"published", "message"}
    assert_log_clean(server)


# -- 2. an op flood from a client that never reads ---------------------------------------


def test_an_op_flood_from_a_client_that_never_reads_is_closed(twistd_servers, redis_client):
    """Subscribes (replacing one another), publishes and unsubscribes, each
    with an 8 KiB ref, as fast as a client can send them, none of their replies
    read: the server handles them one at a time, then, its replies past
    WS4REDIS_MAX_BUFFERED_BYTES, closes the socket (1008) and reads nothing
    more; it does not grow, and another client's publish round trips go on."""
    server = twistd_servers(SMALL_CAP)
    tag = unique("flood")
    pair = {"facility": tag, "audience": "broadcast"}
    ref = "f" * 8192
    blob = b"".join(
        op_frame(op)
        for op in [
            {"op": "subscribe", **pair, "ref": ref},
            {"op": "publish", **pair, "data": "flood", "ref": ref},
            {"op": "unsubscribe", **pair, "ref": ref},
            {"op": "unsubscribe", "facility": f"{tag}-never", "audience": "user", "ref": ref},
        ]
        * 50
    )
    flooder = V2Socket(server.port, f"/ws/{tag}?publish-broadcast", receive_buffer=16 * 1024)
    other_tag = unique("served")
    process = psutil.Process(server.process.pid)
    with v2_client(server, f"{other_tag}?subscribe-broadcast&publish-broadcast") as other:
        assert json.loads(other.recv(timeout=TIMEOUT))["op"] == "subscribed"
        flood = Flood(flooder.sock, blob)
        before = peak = process.memory_info().rss
        round_trips = []
        try:
            flood.start()
            deadline = time.monotonic() + 20
            while not (policy_lines(server, tag) and flood.stalled(1.0)):
                assert time.monotonic() < deadline, "the flood is still read"
                started = time.monotonic()
                other.send(
                    json.dumps(
                        {
                            "op": "publish",
                            "facility": other_tag,
                            "audience": "broadcast",
                            "data": "ping",
                            "ref": len(round_trips),
                        }
                    )
                )
                ops = {json.loads(other.recv(timeout=TIMEOUT))["op"] for _ in range(2)}
                assert ops == {"published", "message"}
                round_trips.append(time.monotonic() - started)
                peak = max(peak, process.memory_info().rss)
        finally:
            flood.stop()
            flooder.close()
    growth = (peak - before) / MIB
    assert growth < 8, f"server grew by {growth:.1f} MiB"
    assert "WS4REDIS_MAX_BUFFERED_BYTES" in policy_lines(server, tag)[0]
    round_trips.sort()
    assert round_trips[len(round_trips) // 2] < 0.5, round_trips
    assert round_trips[-1] < 2, round_trips


# -- 5. what a socket keeps, per op and per subscription -----------------------------------


def hook_calls(ws: V2Socket) -> int:
    """How many times WS4REDIS_ALLOWED_CHANNELS ran for this websocket, this question included."""
    ws.send_op({"op": "publish", "facility": "hook-calls", "audience": "broadcast", "data": "?"})
    reply = ws.read_op()
    assert reply["code"] == 403, reply
    return int(reply["reason"].split()[0])


def publish(facility_name: str) -> dict:
    return {"op": "publish", "facility": facility_name, "audience": "broadcast", "data": "x"}


def test_publish_grants_are_kept_for_the_cap_of_pairs_only(twistd_servers, redis_client):
    """A publish is authorized once per pair and then cached, for
    WS4REDIS_MAX_SUBSCRIPTIONS pairs, the least recently used forgotten: a
    client publishing to ever new facilities costs hook calls, not memory."""
    server = twistd_servers(SUBSCRIPTION_CAP)
    tag = unique("grants")
    ws = V2Socket(server.port, "/ws/")
    try:
        start = hook_calls(ws)
        for op in [publish(f"{tag}-{n}") for n in range(CAP + 1)] + [publish(f"{tag}-{n}") for n in range(1, CAP + 1)]:
            ws.send_op(op)
            assert ws.read_op()["op"] == "published"
        ws.send_op(publish(f"{tag}-0"))  # forgotten when the CAP + 1st came
        assert ws.read_op()["op"] == "published"
        assert hook_calls(ws) - start - 1 == CAP + 2
    finally:
        ws.close()


def test_ops_that_keep_nothing_leave_nothing(twistd_servers, redis_client):
    """500 times over: a subscribe replacing itself, an unsubscribe of a pair
    never subscribed, a publish to a new facility (a new grant), each with a
    2 KiB ref. The socket then holds one Redis channel, and the server has not
    grown by what it was sent (3.3 MiB)."""
    server = twistd_servers(SUBSCRIPTION_CAP)
    tag = unique("churn")
    count = 500
    ws = V2Socket(server.port, "/ws/")
    try:
        hook_calls(ws)
        ref = "r" * 2048
        ops = []
        for n in range(count):
            ops += [
                {"op": "subscribe", "facility": tag, "audience": "broadcast", "ref": ref},
                {"op": "unsubscribe", "facility": facility(tag, n), "audience": "group", "ref": ref},
                {**publish(facility(tag, n)), "ref": ref},
            ]
        replies, growth = replies_and_growth(server, ws, ops)
        assert [reply["op"] for reply in replies] == ["subscribed", "unsubscribed", "published"] * count
        assert channels_of(redis_client, tag) == [f"broadcast:{tag}".encode()]
        assert growth < 3, f"server grew by {growth:.1f} MiB"
    finally:
        ws.close()


def test_a_socket_closed_while_its_op_waits_releases_everything(twistd_servers, redis_client):
    """Websockets that each send a subscribe that waits on the thread pool
    (a slow hook) and are gone before it is decided: none of those
    subscriptions reaches Redis once decided, and their places in
    WS4REDIS_MAX_CONNECTIONS are free again. (Until then they hold them:
    nothing is read from a socket while its op waits, its end neither.)"""
    server = twistd_servers(SUBSCRIPTION_CAP)
    tag = unique("slow-gone")
    gone = [V2Socket(server.port, "/ws/") for _ in range(MAX_CONNECTIONS - 1)]
    for n, ws in enumerate(gone):
        ws.send_op({"op": "subscribe", "facility": f"{tag}-{n}", "audience": "broadcast"})
        if n % 2:  # half of them reset (RST), the others closed (FIN)
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()
    # Asked last of the pool, and as slow: decided once every op before it is.
    probe = V2Socket(server.port, "/ws/")
    try:
        probe.send_op({"op": "subscribe", "facility": f"{tag}-probe", "audience": "broadcast"})
        assert probe.read_op()["op"] == "subscribed"
    finally:
        probe.close()
    deadline = time.monotonic() + TIMEOUT
    while channels_of(redis_client, tag):
        assert time.monotonic() < deadline, channels_of(redis_client, tag)
        time.sleep(0.05)
    while True:
        try:
            sockets = [V2Socket(server.port, "/ws/") for _ in range(MAX_CONNECTIONS)]  # each asserts its 101
            break
        except AssertionError:
            assert time.monotonic() < deadline, "places in WS4REDIS_MAX_CONNECTIONS are still taken"
            time.sleep(0.1)
    for ws in sockets:
        ws.close()


# -- 6. a payload that looks like the history's envelope ----------------------------------

FORGED = history.ENVELOPE_MAGIC + b"99999999999999999999-0\0forged"


def payload_of(message: dict) -> bytes:
    return base64.b64decode(message["data_b64"]) if "data_b64" in message else message["data"].encode()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"WS4REDIS_HISTORY_SIZE": 5, "WS4REDIS_EXPIRE": 60}],
    ids=["live, history off", "persisted, history on"],
)
def test_a_payload_that_looks_like_an_envelope_is_delivered_as_sent(twistd_servers, redis_client, overrides):
    """A client publishes binary data that starts as the history's envelope
    does, with an id of its choosing: every websocket gets those bytes as
    sent, with no id (or the real one), live or kept; none gets the forged id
    or the payload cut after it."""
    server = twistd_servers(overrides)
    tag = unique("forged")
    pair = {"facility": tag, "audience": "broadcast"}
    with (
        v2_client(server, f"{tag}?subscribe-broadcast&publish-broadcast") as publisher,
        connect(server.ws_url(f"{tag}?subscribe-broadcast"), open_timeout=TIMEOUT) as plain,
    ):
        assert json.loads(publisher.recv(timeout=TIMEOUT))["op"] == "subscribed"
        wait_subscribed(redis_client, f"broadcast:{tag}")
        publisher.send(json.dumps({"op": "publish", **pair, "data_b64": base64.b64encode(FORGED).decode()}))
        replies = {reply["op"]: reply for reply in (json.loads(publisher.recv(timeout=TIMEOUT)) for _ in range(2))}
        real_id = replies["published"]["id"]
        assert replies["message"]["id"] == real_id  # None with the history off
        assert payload_of(replies["message"]) == FORGED
        assert plain.recv(timeout=TIMEOUT) == FORGED.decode()  # valid UTF-8: a text frame
        if overrides:
            ask(publisher, {"op": "unsubscribe", **pair})
            kept = [ask(publisher, {"op": "subscribe", **pair}), json.loads(publisher.recv(timeout=TIMEOUT))]
            assert kept[1]["id"] == real_id
            assert payload_of(kept[1]) == FORGED
            with connect(server.ws_url(f"{tag}?subscribe-broadcast"), open_timeout=TIMEOUT) as later:
                assert later.recv(timeout=TIMEOUT) == FORGED.decode()


# -- 7. presence ---------------------------------------------------------------------------

PRESENCE_CAP = {**SUBSCRIPTION_CAP, "WS4REDIS_PRESENCE": True}


def presence_keys(redis_client, tag: str) -> list[bytes]:
    return sorted(redis_client.scan_iter(f"*presence*{tag}*")) + sorted(channels_of(redis_client, tag))


def wait_for_no_presence(redis_client, tag: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while presence_keys(redis_client, tag):
        assert time.monotonic() < deadline, presence_keys(redis_client, tag)
        time.sleep(0.05)


def test_presence_churn_costs_only_the_subscription_cap_and_leaves_nothing(twistd_servers, redis_client):
    """WS4REDIS_PRESENCE: one socket asks 400 times for the presence of a new
    facility (128 characters, 2 KiB refs) and drops it, in one go: at most
    WS4REDIS_MAX_SUBSCRIPTIONS facilities at a time are counted or listened
    to, each answered, the server has not grown by what it was sent (1.2 MiB),
    and once they are dropped Redis holds no presence key or channel of
    them; a socket holding the cap of them and reset (RST) leaves none either."""
    server = twistd_servers(PRESENCE_CAP)
    tag = unique("presence")
    count = 400
    ws = V2Socket(server.port, "/ws/")
    try:
        hook_calls(ws)
        ref = "r" * 2048
        ops = []
        for n in range(count):
            pair = {"facility": facility(tag, n), "audience": "broadcast"}
            ops += [{"op": "subscribe", **pair, "presence": True, "ref": ref}, {"op": "unsubscribe", **pair}]
        replies, growth = replies_and_growth(server, ws, ops)
        subscribed = replies[0::2]
        assert all(reply["op"] == "subscribed" for reply in subscribed), subscribed[:3]
        assert {json.dumps(reply["presence"]) for reply in subscribed} == {
            json.dumps({"users": [], "anonymous": 1, "connections": 1})
        }
        assert [reply["op"] for reply in replies[1::2]] == ["unsubscribed"] * count
        assert growth < 3, f"server grew by {growth:.1f} MiB"
        wait_for_no_presence(redis_client, tag)
        for n in range(CAP):
            ws.send_op({"op": "subscribe", "facility": facility(tag, n), "audience": "broadcast", "presence": True})
        assert [ws.read_op()["op"] for _ in range(CAP)] == ["subscribed"] * CAP
        assert len(redis_client.keys(f"*presence*{tag}*:nodes")) == CAP
    finally:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()
    wait_for_no_presence(redis_client, tag)
    assert_log_clean(server)
