"""Property-based tests (hypothesis) of what a client controls: the query
string, the facility in the path, the Origin header, and the raw bytes of a
handshake. Bounded: a fixed number of examples each, no database of failures."""

from __future__ import annotations

import re
import socket
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_door import assert_still_serving
from test_hostile import RawSocket
from twisted_ws4redis import audience
from twisted_ws4redis.conf import DEFAULTS
from twisted_ws4redis.origin import OriginPolicy

FAST = settings(max_examples=300, deadline=None, database=None)
LIVE = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RECOGNISED = audience.SUBSCRIBE_FLAGS + audience.PUBLISH_FLAGS
FACILITY = re.compile(DEFAULTS["WS4REDIS_FACILITY_PATTERN"])


@FAST
@given(st.text())
def test_any_query_string_parses_to_known_flags(query):
    flags, echo = audience.parse_flags(query, RECOGNISED)
    assert set(flags) <= set(RECOGNISED)
    assert len(flags) == len(set(flags))
    assert isinstance(echo, bool)


@FAST
@given(st.lists(st.sampled_from((*RECOGNISED, "echo", "other", "x=1"))), st.sampled_from(["", "=1", "=yes"]))
def test_flags_come_back_in_order_once_each(chosen, value):
    query = "&".join(quote(flag.upper() if i % 2 else flag) + value for i, flag in enumerate(chosen))
    flags, echo = audience.parse_flags(query, RECOGNISED)
    expected = list(dict.fromkeys(flag for flag in chosen if flag in RECOGNISED))
    assert flags == expected
    assert echo == ("echo" in chosen)


@FAST
@given(st.text())
def test_a_facility_survives_the_path(facility):
    assert audience.facility_from_path("/ws/" + quote(facility, safe=""), "/ws/") == facility


@FAST
@given(st.binary())
def test_any_path_gives_a_facility_or_a_decoding_error(raw):
    path = "/ws/" + "".join(f"%{byte:02X}" for byte in raw)
    try:
        facility = audience.facility_from_path(path, "/ws/")
    except UnicodeDecodeError:
        return
    assert facility.encode("utf-8") == raw


@FAST
@given(st.text(), st.sampled_from(["", "demo:"]), st.text(alphabet=st.characters(blacklist_characters=":")))
def test_an_allowed_facility_is_recovered_from_every_channel_name(facility, prefix, member):
    """No ':' in an allowed facility: every channel name splits back into its
    parts, so two audiences or facilities never share a name."""
    if not FACILITY.fullmatch(facility):
        return
    assert audience.channel_name(prefix, "broadcast", facility) == f"{prefix}broadcast:{facility}"
    for kind in ("user", "group", "session"):
        name = audience.channel_name(prefix, kind, facility, member)
        assert name[len(prefix) :].split(":") == [kind, member, facility]
    assert not set("*?[]") & set(facility)


@FAST
@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_the_origin_check_never_fails_and_refuses_strangers(origin, host):
    policy = OriginPolicy(["https://partner.test"], ["site.test"])
    allowed = policy.allows(origin, host)
    assert isinstance(allowed, bool)
    if origin is not None and allowed:
        normal = origin.strip().lower()
        assert normal == "https://partner.test" or "site.test" in normal or (host and host.strip().lower() in normal)


# -- against a live server --------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Origin",
        "Cookie",
        "Sec-WebSocket-Protocol",
        "Content-Length",
        "Transfer-Encoding",
        "X-Any",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=80),
    st.sampled_from(["websocket", "Upgrade", "13", "8", "chunked", "-1", "dGhlIHNhbXBsZSBub25jZQ=="]),
)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


@LIVE
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "G\x00T", ""]),
    path=st.text(max_size=60).map(lambda text: "/ws/" + quote(text, safe="/?&=%")),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8),
)
def test_any_handshake_gets_an_http_answer_or_a_close(server, redis_client, method, path, headers):
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    answer = exchange(server.port, request.encode("latin-1"))
    assert answer == b"" or re.match(rb"HTTP/1\.[01] [1-5]\d\d ", answer), answer[:200]


@LIVE
@given(st.binary(min_size=1, max_size=600))
def test_random_bytes_after_a_valid_handshake_cost_nothing_else(server, redis_client, garbage):
    """Whatever follows the handshake, the server closes that connection or
    waits for more; it never answers with something that is not a frame."""
    ws = RawSocket(server.port, "/ws/fuzz?subscribe-broadcast&publish-broadcast")
    try:
        ws.sock.sendall(garbage)
        ws.sock.settimeout(0.3)
        opcode, _ = ws.read_frame()
        assert opcode in (0x8, 0x9, 0xA)  # a close, the server's ping, or the pong of a ping in the garbage
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        ws.close()


def test_the_server_is_still_serving_after_the_fuzzing(server, redis_client):
    assert_still_serving(server, redis_client)
