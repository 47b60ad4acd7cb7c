"""Hostile clients cost only themselves (issue 10, items 1, 2 and 5): every
byte the server writes to a websocket counts against WS4REDIS_MAX_BUFFERED_BYTES,
reading stops while writes back up, only the answer to the server's own ping
proves a peer alive, and frame floods are cut off (WS4REDIS_MAX_FRAME_RATE,
WS4REDIS_MAX_FRAGMENTS). Each flood runs against a real server while its
memory, or another client's latency, is measured."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psutil
import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.web import server as web_server
from twisted.web.resource import Resource
from websockets.sync.client import connect

from conftest import login, session_key, unique, wait_subscribed
from test_door import assert_still_serving, handshake
from test_hostile import RawSocket, client_frame
from twisted_ws4redis.server.outbox import buffered_bytes

TIMEOUT = 5
#: The frame limits off, to see what the write path alone does with a flood.
NO_FRAME_LIMITS = {"WS4REDIS_MAX_FRAME_RATE": None, "WS4REDIS_MAX_FRAGMENTS": None}
#: A cap below Twisted's write-buffer size (64 KiB), so that it is met before reading pauses.
SMALL_CAP = {**NO_FRAME_LIMITS, "WS4REDIS_MAX_BUFFERED_BYTES": 32 * 1024}
HEARTBEAT = "--heartbeat--" * 9  # answers as long as pongs, so that the kernel's buffers fill as fast
HEARTBEAT_SMALL_CAP = {**SMALL_CAP, "WS4REDIS_HEARTBEAT": HEARTBEAT}
FAST_PINGS = {"WS4REDIS_AUTO_PING_INTERVAL": 0.5, "WS4REDIS_AUTO_PING_TIMEOUT": 1}
LOW_FRAME_LIMITS = {"WS4REDIS_MAX_FRAME_RATE": 50, "WS4REDIS_MAX_FRAGMENTS": 10}
PING = client_frame(0x9, b"p" * 125)
MIB = 2**20


class Flood(threading.Thread):
    """Sends ``blob`` again and again (after ``start`` once) until stopped or
    cut off, counting the bytes the kernel took."""

    def __init__(self, sock: socket.socket, blob: bytes, start: bytes = b""):
        super().__init__(daemon=True)
        self.sock, self.blob, self.start_with = sock, blob, start
        self.sent = 0
        self.error: OSError | None = None
        self.progressed = time.monotonic()
        self.running = True
        sock.settimeout(0.1)

    def run(self) -> None:
        try:
            self.sock.sendall(self.start_with)
            view = memoryview(self.blob)
            while self.running:
                try:
                    sent = self.sock.send(view[self.sent % len(self.blob) :])
                except TimeoutError:
                    continue
                self.sent += sent
                self.progressed = time.monotonic()
        except OSError as exc:
            self.error = exc

    def stalled(self, seconds: float) -> bool:
        """Not one byte taken for ``seconds`` (the server reads nothing), or cut off."""
        return self.error is not None or time.monotonic() - self.progressed >= seconds

    def stop(self) -> None:
        self.running = False
        self.join(TIMEOUT)


def flood_until(floods: list[Flood], process: psutil.Process, done, timeout: float = 15.0) -> float:
    """Run ``floods`` until ``done()`` and the server takes nothing more from
    any of them (for a second); the server's RSS growth (MiB) meanwhile."""
    before = peak = process.memory_info().rss
    for flood in floods:
        flood.start()
    deadline = time.monotonic() + timeout
    while not (done() and all(flood.stalled(1.0) for flood in floods)):
        assert time.monotonic() < deadline, f"the server still reads after {timeout} s"
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.05)
    for flood in floods:
        flood.stop()
    return (peak - before) / MIB


def final_close_code(ws: RawSocket) -> int | None:
    """Read everything up to the server's close frame: its code, or None when
    the connection was dropped instead."""
    ws.sock.settimeout(TIMEOUT)
    try:
        return ws.close_code()
    except (ConnectionError, OSError):
        return None


def policy_lines(server, facility: str) -> list[str]:
    return [line for line in server.log().splitlines() if "WSPOLICY" in line and facility in line]


def wait_for_policy_line(server, facility: str, timeout: float = TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while not (lines := policy_lines(server, facility)):
        assert time.monotonic() < deadline, f"no WSPOLICY line for {facility}"
        time.sleep(0.05)
    return lines[0]


def get_latency(server) -> float:
    """Seconds for a complete ``GET /`` on a new connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:100]
    return time.monotonic() - started


# -- item 1: one write path, one cap ------------------------------------------------------

FLOODS = {
    "pings (their pongs)": (PING, SMALL_CAP),
    "heartbeats (their answers)": (client_frame(0x1, HEARTBEAT.encode()), HEARTBEAT_SMALL_CAP),
}


@pytest.mark.parametrize(("frame", "overrides"), FLOODS.values(), ids=FLOODS.keys())
def test_a_flood_of_questions_from_a_client_that_never_reads_is_closed(twistd_servers, redis_client, frame, overrides):
    """Two clients send what the server answers (pings, heartbeats) and read
    nothing: past WS4REDIS_MAX_BUFFERED_BYTES of answers each is closed
    (1008, WSPOLICY), the server stops reading them, and its memory stays flat."""
    server = twistd_servers(overrides)
    facilities = [unique("questions") for _ in range(2)]
    clients = [RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast") for facility in facilities]
    try:
        growth = flood_until(
            [Flood(ws.sock, frame * 500) for ws in clients],
            psutil.Process(server.process.pid),
            lambda: all(policy_lines(server, facility) for facility in facilities),
        )
        assert growth < 8, f"server grew by {growth:.1f} MiB"
        for ws, facility in zip(clients, facilities, strict=True):
            assert "WS4REDIS_MAX_BUFFERED_BYTES" in policy_lines(server, facility)[0]
            assert final_close_code(ws) in (1008, None)
    finally:
        for ws in clients:
            ws.close()
    assert_still_serving(server, redis_client, HEARTBEAT)


def test_a_persisted_replay_counts_against_the_cap(twistd_servers, redis_client):
    """Five kept messages of 2 MB for a client that reads nothing yet: once
    they fill the kernel's buffers (about 4 MB here), the next replay is
    refused and the socket closed."""
    server = twistd_servers(HEARTBEAT_SMALL_CAP)
    facility = unique("replay")
    cookie = login(server, "mary")
    channels = [
        f"broadcast:{facility}",
        f"user:mary:{facility}",
        f"group:chatusers:{facility}",
        f"group:staff:{facility}",
        f"session:{session_key(cookie)}:{facility}",
    ]
    for channel in channels:
        redis_client.set(channel, b"k" * 2_000_000)
    ws = RawSocket(
        server.port,
        f"/ws/{facility}?subscribe-broadcast&subscribe-user&subscribe-group&subscribe-session",
        extra=f"Cookie: {cookie}\r\n",
    )
    try:
        assert "WS4REDIS_MAX_BUFFERED_BYTES" in wait_for_policy_line(server, facility)
        ws.sock.settimeout(TIMEOUT)
        frames = []
        while (frame := ws.read_frame())[0] != 0x8:
            frames.append(frame)
        assert frames[0] == (0x1, HEARTBEAT.encode())
        replays = [payload for opcode, payload in frames[1:] if opcode == 0x1]
        assert 1 <= len(replays) < len(channels)
        assert struct.unpack("!H", frame[1][:2])[0] == 1008
    finally:
        ws.close()


def test_reading_pauses_while_writes_back_up_and_resumes_once_the_client_reads(twistd_servers, redis_client):
    """Pings from a client that does not read: once their pongs fill the
    transport's buffer the server reads nothing more from it (the client's
    sends stall), without closing it and without growing. Once the client
    reads, every ping gets its pong, and newer ones too."""
    server = twistd_servers(NO_FRAME_LIMITS)
    facility = unique("paused")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    try:
        flood = Flood(ws.sock, PING * 100)
        growth = flood_until([flood], psutil.Process(server.process.pid), lambda: True)
        assert flood.error is None, flood.error
        assert growth < 8, f"server grew by {growth:.1f} MiB"
        assert not policy_lines(server, facility)
        pings = -(-flood.sent // len(PING))  # the last one perhaps in part
        rest = PING[flood.sent % len(PING) :] if flood.sent % len(PING) else b""
        ws.sock.settimeout(TIMEOUT)
        finishing = threading.Thread(target=ws.sock.sendall, args=(rest + client_frame(0x9, b"marker"),))
        finishing.start()
        for _ in range(pings):
            assert answer(ws) == (0xA, b"p" * 125)
        assert answer(ws) == (0xA, b"marker")
        finishing.join(TIMEOUT)
    finally:
        ws.close()


def answer(ws) -> tuple[int, bytes]:
    """The next frame that is not one of the server's own pings (every
    WS4REDIS_AUTO_PING_INTERVAL, 30 s, which a slow run may cross)."""
    while True:
        frame = ws.read_frame()
        if frame[0] != 0x9:
            return frame


# -- item 2: only the answer to the server's ping counts ---------------------------------


def test_unsolicited_pongs_do_not_keep_a_dead_peer_alive(twistd_servers, redis_client):
    """A client that reads the server's pings but sends pongs of its own
    (with the payload the server's pings used to carry) is dropped as dead."""
    server = twistd_servers(FAST_PINGS)
    facility = unique("liar")
    liar = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    liar.sock.settimeout(0.1)
    started = time.monotonic()
    try:
        with pytest.raises((ConnectionError, OSError)):
            while time.monotonic() - started < 4:
                try:
                    if not liar.sock.recv(4096):
                        raise ConnectionError("closed by the server")
                except TimeoutError:
                    pass
                liar.send_frame(0xA, b"ws4redis")
                liar.send_frame(0xA)
        assert time.monotonic() - started < 3
        assert any("WSDEAD" in line and facility in line for line in server.log().splitlines())
    finally:
        liar.close()


def test_the_answer_to_the_servers_ping_keeps_a_peer_alive(twistd_servers, redis_client):
    server = twistd_servers(FAST_PINGS)
    facility = unique("honest")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    try:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        pings = set()
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # several pings, each past the timeout of the one before
            opcode, payload = ws.read_frame()
            assert opcode == 0x9, (opcode, payload)
            pings.add(payload)
            ws.send_frame(0xA, payload)
        assert len(pings) >= 3  # a fresh payload for every ping
        redis_client.publish(f"broadcast:{facility}", "still alive")
        while (frame := ws.read_frame())[0] == 0x9:
            ws.send_frame(0xA, frame[1])
        assert frame == (0x1, b"still alive")
    finally:
        ws.close()


# -- item 5: frame floods ------------------------------------------------------------------


def test_a_tiny_fragment_flood_is_closed_and_the_server_stays_responsive(server, redis_client):
    """One-byte fragments as fast as a client can send them (under the
    defaults): 1008 after the burst allowance, nothing more read, and a
    GET on another connection stays fast meanwhile."""
    facility = unique("fragments")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast&publish-broadcast")
    flood = Flood(ws.sock, client_frame(0x0, b"b", fin=False) * 10_000, start=client_frame(0x1, b"a", fin=False))
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    try:
        flood.start()
        latencies = []
        for _ in range(6):
            latencies.append(get_latency(server))
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not flood.stalled(1.0):
            assert time.monotonic() < deadline, "the server still reads the flood"
            time.sleep(0.05)
        flood.stop()
        assert flood.error is None, flood.error  # not read any more, and not yet dropped
        growth = (process.memory_info().rss - before) / MIB
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.25, latencies
        assert latencies[-1] < 1, latencies
        assert growth < 8, f"server grew by {growth:.1f} MiB"
        line = wait_for_policy_line(server, facility)
        assert "WS4REDIS_MAX_FRAME_RATE" in line or "WS4REDIS_MAX_FRAGMENTS" in line
        assert final_close_code(ws) == 1008
    finally:
        ws.close()
    assert_still_serving(server, redis_client)


def test_too_many_fragments_in_one_message_get_1008(twistd_servers, redis_client):
    server = twistd_servers(LOW_FRAME_LIMITS)
    facility = unique("fragmented")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo")
    try:
        wait_subscribed(redis_client, f"broadcast:{facility}")

        def message(fragments: int) -> bytes:
            return b"".join(
                client_frame(0x1 if i == 0 else 0x0, str(i % 10).encode(), fin=i == fragments - 1)
                for i in range(fragments)
            )

        ws.sock.sendall(message(10))  # at the limit: one message
        assert ws.read_frame() == (0x1, b"0123456789")
        ws.sock.sendall(message(11))
        assert ws.close_code() == 1008
        assert "WS4REDIS_MAX_FRAGMENTS" in wait_for_policy_line(server, facility)
    finally:
        ws.close()


def test_a_frame_flood_gets_1008_after_one_seconds_worth(twistd_servers, redis_client):
    """Pings count as frames: of 60 sent at once, 50 (WS4REDIS_MAX_FRAME_RATE)
    are answered, then the socket is closed."""
    server = twistd_servers(LOW_FRAME_LIMITS)
    facility = unique("frames")
    ws = RawSocket(server.port, f"/ws/{facility}?subscribe-broadcast")
    try:
        ws.sock.sendall(client_frame(0x9) * 60)
        frames = []
        while (frame := ws.read_frame())[0] != 0x8:
            frames.append(frame)
        assert frames == [(0xA, b"")] * 50
        assert struct.unpack("!H", frame[1][:2])[0] == 1008
        assert "WS4REDIS_MAX_FRAME_RATE" in wait_for_policy_line(server, facility)
    finally:
        ws.close()
    assert_still_serving(server, redis_client)


def test_a_client_within_the_frame_rate_is_never_closed(twistd_servers, redis_client):
    server = twistd_servers(LOW_FRAME_LIMITS)
    ws = RawSocket(server.port, f"/ws/{unique('steady')}?subscribe-broadcast")
    try:
        for _ in range(3):
            ws.sock.sendall(client_frame(0x9) * 40)
            for _ in range(40):
                assert ws.read_frame() == (0xA, b"")
            time.sleep(0.9)  # 45 frames' worth again
    finally:
        ws.close()


def test_a_busy_normal_client_is_never_closed_under_the_defaults(server, redis_client):
    """Hundreds of messages at once, a message in 200 fragments, pings: all
    answered, nothing closed."""
    facility = unique("busy")
    with connect(server.ws_url(f"{facility}?subscribe-broadcast&publish-broadcast&echo"), open_timeout=TIMEOUT) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        for round_ in range(2):
            for i in range(400):
                ws.send(f"{round_}-{i}")
            ws.send(f"part{i}," for i in range(200))
            pong = ws.ping()  # behind the echoes: the client reads them first
            for i in range(400):
                assert ws.recv(timeout=TIMEOUT) == f"{round_}-{i}"
            assert ws.recv(timeout=TIMEOUT) == "".join(f"part{i}," for i in range(200))
            assert pong.wait(TIMEOUT)
            time.sleep(0.5)
    assert not policy_lines(server, facility)


# -- the library behaviour this relies on --------------------------------------------------


class _Recording(WebSocketServerProtocol):
    """Autobahn's protocol with its write sink and frame hook recorded."""

    def sendData(self, data, sync=False, chopsize=None):
        self.factory.written.append(data)

    def onFrameBegin(self):
        self.factory.frames.append(self.current_frame.opcode)
        super().onFrameBegin()


def _open_autobahn_protocol() -> tuple[WebSocketServerProtocol, StringTransport]:
    factory = WebSocketServerFactory()
    factory.protocol = _Recording
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    factory.written, factory.frames = [], []
    protocol, transport = factory.buildProtocol(None), StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake("/"))
    assert protocol.state == protocol.STATE_OPEN
    return protocol, transport


def test_autobahn_writes_every_kind_of_frame_through_send_data():
    """WebSocketProtocol.sendData is the one write path only if Autobahn
    writes nothing to the transport by itself."""
    protocol, transport = _open_autobahn_protocol()
    factory = protocol.factory
    protocol.sendPing(b"i")
    protocol.dataReceived(client_frame(0x9, b"q"))  # answered with a pong
    protocol.sendMessage(b"message")
    protocol.sendPreparedMessage(factory.prepareMessage(b"prepared"))
    protocol.sendCloseFrame(code=1008, reasonUtf8=b"why")
    response, *frames = factory.written
    assert response.startswith(b"HTTP/1.1 101")
    assert frames == [b"\x89\x01i", b"\x8a\x01q", b"\x81\x07message", b"\x81\x08prepared", b"\x88\x05\x03\xf0why"]
    assert transport.value() == b""


def test_autobahn_unregisters_the_producer_before_it_drops_the_connection():
    """Else a connection dropped while reading is paused (the producer paused)
    would never finish closing: Twisted resumes a paused producer instead."""
    protocol, transport = _open_autobahn_protocol()
    transport.registerProducer(protocol, True)
    protocol.dropConnection(abort=False)
    assert transport.producer is None
    assert transport.disconnecting


def test_autobahn_calls_on_frame_begin_for_every_frame_with_its_opcode():
    protocol, _ = _open_autobahn_protocol()
    protocol.dataReceived(
        client_frame(0x1, b"a", fin=False)
        + client_frame(0x9, b"p")
        + client_frame(0xA)
        + client_frame(0x0, b"b", fin=False)
        + client_frame(0x0, b"c")
    )
    assert protocol.factory.frames == [0x1, 0x9, 0xA, 0x0, 0x0]


class _NeverFinished(Resource):
    isLeaf = True

    def render(self, request):
        return web_server.NOT_DONE_YET


def test_twisted_web_stays_the_producer_and_ignores_pauses_during_a_request():
    """Why the websocket registers itself as its transport's producer: the
    HTTPChannel that handed the transport over is registered, and while its
    request (the upgrade, never finished) is open, a pause does nothing."""
    transport = StringTransport()
    channel = web_server.Site(_NeverFinished(), reactor=MemoryReactorClock()).buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert isinstance(transport.producer, web_server.http.HTTPChannel)
    transport.producer.pauseProducing()
    assert transport.producerState == "producing"


class _Stuck(FileDescriptor):
    """A socket transport whose kernel takes nothing until ``unblock``."""

    connected = True
    blocked = True

    def writeSomeData(self, data):
        return 0 if self.blocked else len(data)

    def startWriting(self):
        pass

    def stopWriting(self):
        pass


class _Producer:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


def test_a_socket_transport_pauses_its_producer_past_its_buffer_size_and_resumes_it_drained():
    """What reading pauses rely on, and how buffered_bytes reads the buffer."""
    transport, producer = _Stuck(reactor=MemoryReactor()), _Producer()
    transport.registerProducer(producer, True)
    transport.write(b"x" * transport.bufferSize)
    assert producer.calls == []
    assert buffered_bytes(transport) == transport.bufferSize
    transport.write(b"y")
    assert producer.calls == ["pause"]
    transport.doWrite()  # the kernel takes nothing
    assert buffered_bytes(transport) == transport.bufferSize + 1
    transport.blocked = False
    transport.doWrite()
    assert producer.calls == ["pause", "resume"]
    assert buffered_bytes(transport) == 0


def test_autobahn_looks_up_its_debug_formatters_when_it_logs_so_they_can_be_skipped():
    """protocol.py replaces Autobahn's ``pformat`` and ``hltype`` (called for
    every debug line's arguments, logged or not) in the modules that use them.
    That works only while Autobahn's methods look them up as module globals
    when they run, and while debug logging still gets the real thing."""
    import txaio
    from autobahn.twisted import websocket as autobahn_websocket
    from autobahn.util import hltype
    from autobahn.websocket import protocol as autobahn_protocol

    from twisted_ws4redis.server import protocol  # noqa: F401 (the replacement is made on import)

    assert "hltype" in autobahn_protocol.WebSocketServerProtocol.processHandshake.__code__.co_names
    assert "pformat" in autobahn_protocol.WebSocketProtocol._connectionMade.__code__.co_names
    assert "hltype" in autobahn_websocket.WebSocketAdapterProtocol.connectionMade.__code__.co_names
    for module in (autobahn_protocol, autobahn_websocket):
        assert (
            module.hltype(test_autobahn_looks_up_its_debug_formatters_when_it_logs_so_they_can_be_skipped)
            == "(not formatted: debug logging is off)"
        )
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    try:
        assert autobahn_protocol.hltype(hltype) == hltype(hltype)
        assert autobahn_protocol.pformat({"a": 1}) == "{'a': 1}"
    finally:
        txaio.set_global_log_level(level)


def _autobahn_methods_using(name: str) -> set[str]:
    """The methods of Autobahn's websocket protocol classes whose code names ``name``."""
    import inspect

    from autobahn.twisted import websocket as autobahn_websocket
    from autobahn.websocket import protocol as autobahn_protocol

    found = set()
    for module in (autobahn_protocol, autobahn_websocket):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for method_name, method in vars(cls).items():
                code = getattr(getattr(method, "__func__", method), "__code__", None)
                if code is not None and name in code.co_names:
                    found.add(method_name)
    return found


def test_what_a_websocket_lets_go_of_once_open_autobahn_reads_only_during_the_handshake():
    """protocol.py drops HANDSHAKE_ONLY when the websocket opens, and swaps the
    trickled-writes queue for an empty tuple: safe while only the handshake's
    methods read the former and only Autobahn's own sendData (overridden) fills
    the latter."""
    from twisted_ws4redis.server.protocol import HANDSHAKE_ONLY, WebSocketProtocol

    handshake_methods = {
        "processHandshake",
        "succeedHandshake",
        "startHandshake",
        "_actuallyStartHandshake",
        "onConnect",
        "_onConnect",
        "failHandshake",
    }
    for name in HANDSHAKE_ONLY:
        assert _autobahn_methods_using(name) <= handshake_methods, name
    assert _autobahn_methods_using("send_queue") == {"_connectionMade", "_send", "sendData"}
    assert WebSocketProtocol.sendData is not WebSocketServerProtocol.sendData
