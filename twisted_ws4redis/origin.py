"""Which web pages may open a websocket here: the check against cross-site
websocket hijacking, which ws4redis lacked.

A browser attaches the session cookie to a websocket opened by *any* page, and
the same-origin policy does not apply to websockets; only the ``Origin``
header tells this server which site's script is asking. By default an origin
is accepted when it is the site itself: the request's own host, a host of
``ALLOWED_HOSTS`` (except ``'*'``), an entry of ``CSRF_TRUSTED_ORIGINS``, or of
``WS4REDIS_ALLOWED_ORIGINS`` (where ``'*'`` accepts every origin). Clients that
send no ``Origin`` (not browsers) are not concerned.

The request's host must itself be one of ``ALLOWED_HOSTS``, checked as Django
checks it for pages; otherwise a DNS-rebinding page (``Host`` and ``Origin``
both its own name) would pass as "the site itself".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

#: What Django accepts as hosts when DEBUG is on and ALLOWED_HOSTS is empty.
_DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


class OriginPolicy:
    def __init__(
        self,
        trusted_origins: Iterable[str],
        allowed_hosts: Iterable[str],
        debug: bool = False,
        forwarded_host: bool = False,
    ):
        trusted = list(trusted_origins)
        self.any_origin = "*" in trusted
        self._exact = {origin.lower() for origin in trusted if "*" not in origin}
        # "https://*.example.com": subdomains of example.com on https.
        self._subdomains: dict[str, list[str]] = {}
        for origin in trusted:
            if "://*" in origin:
                scheme, _, host = origin.lower().partition("://*")
                self._subdomains.setdefault(scheme, []).append(host)
        allowed_hosts = list(allowed_hosts)
        if debug and not allowed_hosts:
            allowed_hosts = _DEBUG_HOSTS
        self._allowed_hosts = allowed_hosts
        self._hosts = [host for host in allowed_hosts if host != "*"]
        self._forwarded_host = forwarded_host

    def request_host(self, headers: Mapping[str, str]) -> str:
        """The host a request is for, as Django's ``get_host()`` reads it
        (``X-Forwarded-Host`` when ``USE_X_FORWARDED_HOST``); ``headers`` have
        lower-case names."""
        if self._forwarded_host and "x-forwarded-host" in headers:
            return headers["x-forwarded-host"]
        return headers.get("host", "")

    def valid_host(self, host: str) -> bool:
        """Whether Django would serve a page for this host (``ALLOWED_HOSTS``)."""
        domain, _ = split_domain_port(host)
        return bool(domain) and validate_host(domain, self._allowed_hosts)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this ``Origin`` (None: absent) and ``Host`` may go on."""
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().lower()
        if origin in self._exact:
            return True
        try:
            parts = urlsplit(origin)
            netloc, hostname = parts.netloc, parts.hostname
        except ValueError:
            return False
        if not (parts.scheme and netloc and hostname):
            return False  # "null" (sandboxed frames, file: pages) and garbage
        if host and netloc == host.strip().lower():
            return True  # same origin
        if any(is_same_domain(netloc, pattern) for pattern in self._subdomains.get(parts.scheme, ())):
            return True
        domain, _ = split_domain_port(netloc)
        return bool(domain) and validate_host(domain, self._hosts)
