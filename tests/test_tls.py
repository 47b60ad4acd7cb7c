"""TLS on ``ssl:`` endpoints: TLS 1.2 or later, and for TLS 1.2 only the
forward-secret AEAD ciphers of WS4REDIS_TLS_CIPHERS, tried with real TLS
clients against a real server."""
from __future__ import annotations

import inspect
import socket
import ssl
import subprocess
import warnings

import pytest
from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from websockets.sync.client import connect

from conftest import BIN, PROJECT, TwistdServer, free_port, project_env, unique, wait_for_port, wait_subscribed

TIMEOUT = 5


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


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
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
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


@pytest.mark.parametrize("version, cipher", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_modern_clients_are_accepted(tls_server, certificate, version, cipher):
    got_version, got_cipher = negotiate(tls_server.port, client_context(certificate, version=version, ciphers=cipher))
    assert got_version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    if cipher:
        assert got_cipher == cipher


@pytest.mark.parametrize("version, cipher", REFUSED.values(), ids=REFUSED.keys())
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
    server = TwistdServer(redis_server.url, test_db, {"WS4REDIS_TLS_CIPHERS": "ECDHE+CHACHA20"},
                          endpoint=ssl_endpoint(certificate, port))
    try:
        wait_for_port(port, process=server.process)
        chacha = client_context(certificate, version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-CHACHA20-POLY1305")
        assert negotiate(port, chacha) == ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")
        with pytest.raises(ssl.SSLError):
            negotiate(port, client_context(certificate, version=ssl.TLSVersion.TLSv1_2,
                                           ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
    finally:
        server.stop()


@pytest.mark.parametrize("ciphers", ["NO-SUCH-CIPHER", "", "!ALL"])
def test_a_bad_cipher_list_stops_the_start_naming_the_setting(test_db, redis_server, certificate, ciphers):
    command = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "ws4redis", "--settings=testproject.settings",
               f"--endpoint={ssl_endpoint(certificate, free_port())}", f"--redis={redis_server.url}"]
    result = subprocess.run(command, env=project_env(test_db, {"WS4REDIS_TLS_CIPHERS": ciphers}), cwd=PROJECT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "WS4REDIS_TLS_CIPHERS" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- what tls.harden relies on in Twisted -------------------------------------------


def test_the_ssl_parser_options_are_those_harden_carries_over():
    """A new ``ssl:`` option in Twisted would be dropped by tls.harden: carry it over, then update this."""
    assert list(inspect.signature(endpoints._parseSSL).parameters) == [
        "factory", "port", "privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain",
        "dhParameters"]


def test_harden_rebuilds_the_parsed_options_and_keeps_an_explicit_method(certificate):
    from twisted_ws4redis.tls import harden

    description = ssl_endpoint(certificate, 0)
    hardened = harden(endpoints.serverFromString(MemoryReactor(), description), "ECDHE+AESGCM")
    options = hardened._sslContextFactory.getContext().set_options(0)  # returns the options in force
    assert options & SSL.OP_NO_TLSv1_1 and not options & SSL.OP_NO_TLSv1_2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sslmethod= is deprecated in Twisted
        fixed = endpoints.serverFromString(MemoryReactor(), f"{description}:sslmethod=TLSv1_2_METHOD")
        fixed = harden(fixed, "ECDHE+AESGCM")
    assert fixed._sslContextFactory.method == SSL.TLSv1_2_METHOD
    plain = endpoints.serverFromString(MemoryReactor(), "tcp:0")
    assert harden(plain, "ECDHE+AESGCM") is plain
