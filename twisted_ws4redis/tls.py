"""Modern TLS for ``ssl:`` endpoints.

Twisted's ``ssl:`` parser builds its ``CertificateOptions`` with TLS 1.0 as
the minimum and a cipher list that still ends in RSA key exchange (no forward
secrecy). The server keeps what the parser read (key, certificate, chain, DH
parameters) and rebuilds the options with TLS 1.2 as the minimum and, for
TLS 1.2, the ciphers of WS4REDIS_TLS_CIPHERS; TLS 1.3's suites are all
forward-secret AEAD and stay OpenSSL's.
"""
from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion


def acceptable_ciphers(cipher_string: str) -> AcceptableCiphers:
    """The TLS 1.2 ciphers an OpenSSL cipher string names (WS4REDIS_TLS_CIPHERS);
    ImproperlyConfigured naming the setting if it names none."""
    if not isinstance(cipher_string, str) or not cipher_string:
        raise ImproperlyConfigured(f"WS4REDIS_TLS_CIPHERS must be an OpenSSL cipher string, got {cipher_string!r}")
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
            f"({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}) knows")
    return AcceptableCiphers.fromOpenSSLCipherString(cipher_string)


def harden(endpoint: IStreamServerEndpoint, cipher_string: str) -> IStreamServerEndpoint:
    """An ``ssl:`` endpoint gets TLS 1.2 as its minimum and, for TLS 1.2, the
    ciphers ``cipher_string`` (WS4REDIS_TLS_CIPHERS) names; any
    other endpoint is returned as it is. An explicit ``sslmethod=`` is kept.
    (tests/test_tls.py pins the parser's options this carries over.)"""
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint
    parsed: CertificateOptions = endpoint._sslContextFactory
    if parsed.method == SSL.TLS_METHOD:
        version = {"raiseMinimumTo": TLSVersion.TLSv1_2}
    else:  # sslmethod= chose a fixed protocol version: the operator's choice
        version = {"method": parsed.method}
    endpoint._sslContextFactory = CertificateOptions(
        privateKey=parsed.privateKey, certificate=parsed.certificate,
        extraCertChain=parsed.extraCertChain or None, dhParameters=parsed.dhParameters,
        acceptableCiphers=acceptable_ciphers(cipher_string), **version)
    return endpoint
