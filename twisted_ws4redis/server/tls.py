"""Modern TLS for ``ssl:`` endpoints.

Twisted's ``ssl:`` parser builds its ``CertificateOptions`` with TLS 1.0 as
the minimum and a cipher list that still ends in RSA key exchange (no forward
secrecy). The server keeps what the parser read (key, certificate, chain, DH
parameters) and rebuilds the options with TLS 1.2 as the minimum and, for
TLS 1.2, the ciphers of WS4REDIS_TLS_CIPHERS; TLS 1.3's suites are all
forward-secret AEAD and stay OpenSSL's.

Its connections close on the server's terms. Twisted's TLS transport, told
to close, waits for the peer's close_notify, or, before the handshake, for
a handshake that flushes what was written: a peer that sends neither held
the connection (its descriptor, its place under the connection caps) for
ever, whatever the server's deadlines decided.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory


def acceptable_ciphers(cipher_string: str) -> AcceptableCiphers:
    """The TLS 1.2 ciphers a non-empty OpenSSL cipher string names
    (WS4REDIS_TLS_CIPHERS, validated as a string by conf.py);
    ImproperlyConfigured naming the setting if it names none."""
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_cipher_list(cipher_string.encode("ascii"))
        known = SSL.Connection(context).get_cipher_list()
    except (SSL.Error, UnicodeEncodeError):
        known = []
    # OpenSSL lists the TLS 1.3 suites (TLS_…) whatever the string says.
    if not any(not name.startswith("TLS_") for name in known):
        raise ImproperlyConfigured(
            f"WS4REDIS_TLS_CIPHERS {cipher_string!r} names no TLS 1.2 cipher this OpenSSL "
            f"({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}) knows"
        )
    return AcceptableCiphers.fromOpenSSLCipherString(cipher_string)


class ServerTLS(BufferingTLSTransport):
    """Twisted's TLS transport, whose ``loseConnection()`` no client can hold open."""

    def loseConnection(self) -> None:
        if not self._handshakeDone:
            # Nothing written has gone out before the handshake: waiting for one
            # (Twisted's choice when something is buffered) is the client's to prolong.
            self.abortConnection()
        else:
            super().loseConnection()

    def _shutdownTLS(self) -> None:
        super()._shutdownTLS()
        if not self._aborted:
            # Our close_notify is written; the closer need not wait for the
            # peer's (RFC 8446 6.1): TCP closes once its buffer is written.
            self.transport.loseConnection()  # type: ignore[union-attr]  # connected


class ServerTLSEndpoint(SSL4ServerEndpoint):
    """``ssl:``'s endpoint, its connections wrapped in ``ServerTLS``."""

    def wrap(self, protocolFactory) -> TLSMemoryBIOFactory:
        """``protocolFactory`` behind this endpoint's TLS (also on a shared socket, sharedports.py)."""
        factory = TLSMemoryBIOFactory(self._sslContextFactory, False, protocolFactory)
        factory.protocol = ServerTLS
        return factory

    def listen(self, protocolFactory) -> defer.Deferred:
        return defer.execute(
            self._reactor.listenTCP,
            self._port,
            self.wrap(protocolFactory),
            backlog=self._backlog,
            interface=self._interface,
        )


def harden(endpoint: IStreamServerEndpoint, cipher_string: str) -> IStreamServerEndpoint:
    """An ``ssl:`` endpoint gets TLS 1.2 as its minimum and, for TLS 1.2, the
    ciphers ``cipher_string`` (WS4REDIS_TLS_CIPHERS) names; any
    other endpoint is returned as it is. An explicit ``sslmethod=`` is kept.
    Its connections close whatever the client does (``ServerTLS``).
    (tests/test_tls.py pins the parser's options this carries over.)"""
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint
    parsed: CertificateOptions = endpoint._sslContextFactory
    # sslmethod= chose a fixed protocol version: the operator's choice.
    version = {"raiseMinimumTo": TLSVersion.TLSv1_2} if parsed.method == SSL.TLS_METHOD else {"method": parsed.method}
    options = CertificateOptions(
        privateKey=parsed.privateKey,
        certificate=parsed.certificate,
        extraCertChain=parsed.extraCertChain or None,
        dhParameters=parsed.dhParameters,
        acceptableCiphers=acceptable_ciphers(cipher_string),
        **version,
    )
    return ServerTLSEndpoint(endpoint._reactor, endpoint._port, options, endpoint._backlog, endpoint._interface)
