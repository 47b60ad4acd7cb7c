"""TLS on ``ssl:`` endpoints: TLS 1.2 or later, and for TLS 1.2 only the
forward-secret AEAD ciphers of WS4REDIS_TLS_CIPHERS, tried with real TLS
clients against a real server."""

from __future__ import annotations

import contextlib
import inspect
import os
import resource
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings

import pytest
from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from websockets.sync.client import connect

from conftest import (
    PROJECT,
    TwistdServer,
    free_port,
    project_env,
    self_signed_certificate,
    twistd_command,
    unique,
    wait_for_port,
    wait_subscribed,
)
from test_door import handshake

TIMEOUT = 5


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def ssl_endpoint(certificate, port: int) -> str:
    key, cert = certificate
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"


@pytest.fixture(scope="module")
def tls_server(redis_server, test_db, certificate):
    port = free_port()
    server = TwistdServer(redis_server.url, test_db, endpoint=ssl_endpoint(certificate, port))
    server.port = port
    try:
        wait_for_port(port, process=server.process)
        # Django's first request in a process imports and connects, which on a
        # busy machine can outlast a websocket client's opening timeout: warm up.
        context = ssl.create_default_context(cafile=str(certificate[1]))
        with contextlib.suppress(urllib.error.HTTPError):  # an answer all the same
            urllib.request.urlopen(f"https://localhost:{port}/", timeout=30, context=context).close()
        yield server
    finally:
        server.stop()


def client_context(certificate, *, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that offers only ``version`` (and, up to TLS 1.2, only ``ciphers``)."""
    context = ssl.create_default_context(cafile=str(certificate[1]))
    # Lets this client offer what its OpenSSL would refuse by itself (TLS 1.1, RSA key exchange).
    context.set_ciphers(f"{ciphers or 'DEFAULT'}:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    return context


def negotiate(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(protocol version, cipher) the server agrees to, or ssl.SSLError."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version(), tls.cipher()[0]


ACCEPTED = {
    "TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256"),
    "TLS 1.2 ECDHE-RSA-CHACHA20-POLY1305": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"),
    "TLS 1.3": (ssl.TLSVersion.TLSv1_3, None),
}
REFUSED = {
    "TLS 1.1": (ssl.TLSVersion.TLSv1_1, None),
    "TLS 1.0": (ssl.TLSVersion.TLSv1, None),
    "TLS 1.2 RSA key exchange AES128-GCM-SHA256": (ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256"),
    "TLS 1.2 RSA key exchange AES256-SHA256": (ssl.TLSVersion.TLSv1_2, "AES256-SHA256"),
    "TLS 1.2 ECDHE without AEAD ECDHE-RSA-AES128-SHA256": (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256"),
    "TLS 1.2 finite-field DHE-RSA-AES128-GCM-SHA256": (ssl.TLSVersion.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256"),
}


@pytest.mark.parametrize(("version", "cipher"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_modern_clients_are_accepted(tls_server, certificate, version, cipher):
    got_version, got_cipher = negotiate(tls_server.port, client_context(certificate, version=version, ciphers=cipher))
    assert got_version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    if cipher:
        assert got_cipher == cipher


@pytest.mark.parametrize(("version", "cipher"), REFUSED.values(), ids=REFUSED.keys())
def test_old_protocols_and_ciphers_without_forward_secrecy_are_refused(tls_server, certificate, version, cipher):
    with pytest.raises(ssl.SSLError):
        negotiate(tls_server.port, client_context(certificate, version=version, ciphers=cipher))


def test_wss_and_https_still_work(tls_server, certificate, redis_client):
    context = ssl.create_default_context(cafile=str(certificate[1]))
    facility = unique("tls")
    with connect(f"wss://localhost:{tls_server.port}/ws/{facility}?subscribe-broadcast", ssl=context) as ws:
        wait_subscribed(redis_client, f"broadcast:{facility}")
        redis_client.publish(f"broadcast:{facility}", "forward secret")
        assert ws.recv(timeout=TIMEOUT) == "forward secret"


def test_the_cipher_list_is_a_setting(redis_server, test_db, certificate):
    """WS4REDIS_TLS_CIPHERS changes the TLS 1.2 ciphers (here: to CHACHA20 only)."""
    port = free_port()
    server = TwistdServer(
        redis_server.url, test_db, {"WS4REDIS_TLS_CIPHERS": "ECDHE+CHACHA20"}, endpoint=ssl_endpoint(certificate, port)
    )
    try:
        wait_for_port(port, process=server.process)
        chacha = client_context(certificate, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-CHACHA20-POLY1305")
        assert negotiate(port, chacha) == ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")
        with pytest.raises(ssl.SSLError):
            negotiate(
                port, client_context(certificate, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
            )
    finally:
        server.stop()


@pytest.mark.parametrize("ciphers", ["NO-SUCH-CIPHER", "", "!ALL"])
def test_a_bad_cipher_list_stops_the_start_naming_the_setting(test_db, redis_server, certificate, ciphers):
    command = twistd_command(f"--endpoint={ssl_endpoint(certificate, free_port())}", f"--redis={redis_server.url}")
    result = subprocess.run(
        command,
        env=project_env(test_db, {"WS4REDIS_TLS_CIPHERS": ciphers}),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "WS4REDIS_TLS_CIPHERS" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- a client cannot hold a connection the server closes ------------------------------


class SilentTLSClient:
    """Shakes hands, then only reads the TCP stream: it never decrypts what
    comes, so it never answers the server's close_notify, and never closes."""

    def __init__(self, port: int, certificate):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context(cafile=str(certificate[1]))
        self.tls = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self._out.read())
                self._in.write(self.raw.recv(65536))
        self.raw.sendall(self._out.read())

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.raw.sendall(self._out.read())

    def closed_by_the_server(self, within: float) -> bool:
        """Whether the server closes the TCP connection within ``within`` seconds."""
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            self.raw.settimeout(remaining)
            try:
                if not self.raw.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False


REFUSALS = {
    "400 request-target": b"GET /\x85 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "431 head": b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    "Connection: close page": b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    "403 websocket origin": handshake(extra="Origin: http://evil.example\r\n"),
    "400 websocket facility": handshake("/ws/a:b"),
}


@pytest.mark.parametrize("request_bytes", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refused_client_that_ignores_close_notify_is_disconnected(tls_server, certificate, request_bytes):
    """Twisted's TLS waited for the client's close_notify (and the channel, still
    the transport's producer, kept even ours from going out): each of these held
    its descriptor, and a websocket its place under WS4REDIS_MAX_CONNECTIONS, for ever."""
    client = SilentTLSClient(tls_server.port, certificate)
    client.send(request_bytes)
    assert client.closed_by_the_server(within=3)


def test_a_websocket_closed_by_its_client_is_disconnected(tls_server, certificate, redis_client):
    """Autobahn answers a client's close frame and closes: over TLS that waited for a close_notify."""
    facility = unique("tls-close")
    client = SilentTLSClient(tls_server.port, certificate)
    client.send(handshake(f"/ws/{facility}?subscribe-broadcast"))
    wait_subscribed(redis_client, f"broadcast:{facility}")
    client.send(b"\x88\x82\0\0\0\0\x03\xe8")  # close 1000, masked with zeros
    assert client.closed_by_the_server(within=3)


def test_idle_and_past_the_cap_tls_connections_are_closed(redis_server, test_db, certificate):
    """An idle connection is closed at the head deadline, a connection past the
    cap at once, though neither client sends a byte of TLS: the 503, buffered
    until a handshake, made the server wait for one."""
    port = free_port()
    limit, reserve = 160, 100  # 60 client connections
    server = TwistdServer(
        redis_server.url,
        test_db,
        {"WS4REDIS_HANDSHAKE_TIMEOUT": 2, "WS4REDIS_RESERVED_DESCRIPTORS": reserve},
        endpoint=ssl_endpoint(certificate, port),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    sockets = []
    try:
        wait_for_port(port, process=server.process)
        idle = SilentTLSClient(port, certificate)
        for _ in range(limit - reserve + 40):
            # Past the cap the server drops a connection at once: on a busy
            # machine, before this process has seen its connect() complete.
            with contextlib.suppress(ConnectionResetError):
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        assert len(sockets) >= limit - reserve - 5, len(sockets)
        time.sleep(1)
        open_now = len(os.listdir(f"/proc/{server.process.pid}/fd"))
        assert open_now < limit - reserve + 20, open_now  # the 40 past the cap are gone already
        assert idle.closed_by_the_server(within=3)
        assert "EMFILE" not in server.log()
        for sock in sockets:
            sock.close()
        time.sleep(0.5)
        # Every refused connection left the count: a page is served again.
        context = ssl.create_default_context(cafile=str(certificate[1]))
        with urllib.request.urlopen(f"https://localhost:{port}/", context=context, timeout=TIMEOUT) as page:
            assert page.status == 200
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


# -- what tls.harden relies on in Twisted -------------------------------------------


def test_the_ssl_parser_options_are_those_harden_carries_over():
    """A new ``ssl:`` option in Twisted would be dropped by tls.harden: carry it over, then update this."""
    assert list(inspect.signature(endpoints._parseSSL).parameters) == [
        "factory",
        "port",
        "privateKey",
        "certKey",
        "sslmethod",
        "interface",
        "backlog",
        "extraCertChain",
        "dhParameters",
    ]


def test_harden_rebuilds_the_parsed_options_and_keeps_an_explicit_method(certificate):
    from twisted_ws4redis.server.tls import harden

    description = ssl_endpoint(certificate, 0)
    hardened = harden(endpoints.serverFromString(MemoryReactor(), description), "ECDHE+AESGCM")
    options = hardened._sslContextFactory.getContext().set_options(0)  # returns the options in force
    assert options & SSL.OP_NO_TLSv1_1
    assert not options & SSL.OP_NO_TLSv1_2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sslmethod= is deprecated in Twisted
        fixed = endpoints.serverFromString(MemoryReactor(), f"{description}:sslmethod=TLSv1_2_METHOD")
        fixed = harden(fixed, "ECDHE+AESGCM")
    assert fixed._sslContextFactory.method == SSL.TLSv1_2_METHOD
    plain = endpoints.serverFromString(MemoryReactor(), "tcp:0")
    assert harden(plain, "ECDHE+AESGCM") is plain
