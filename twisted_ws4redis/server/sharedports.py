"""Listening sockets shared by the workers of ``--workers``: the supervisor
binds each endpoint once, every worker adopts the same socket (an inherited
descriptor) and accepts from it.

Why not SO_REUSEPORT: it gives each process its own accept queue, and the
connections queued at a worker that dies are reset (22 of 40 in a trial
here); one inherited socket has one queue, which the other workers go on
serving, and it works for every endpoint kind (SO_REUSEPORT has none for
UNIX sockets). A worker's restart never closes the socket, so none of them
refuses a connection (the supervisor holds it open throughout).
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer, tcp, unix
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from .tls import ServerTLSEndpoint


def bind(endpoint: IStreamServerEndpoint) -> IListeningPort:
    """Listen on ``endpoint`` in the supervisor, which never accepts: its
    workers do. Endpoints' ``listen()`` binds at once (``defer.execute``)."""
    idle = Factory()
    idle.noisy = False
    result: list = []
    endpoint.listen(idle).addBoth(result.append)
    if isinstance(result[0], Failure):
        result[0].raiseException()
    port = result[0]
    port.stopReading()
    return port


class _AdoptedUNIXPort(unix.Port):
    """A UNIX port whose closing leaves the socket to its owner, the
    supervisor. Twisted's adopted UNIX port removes the socket file and shuts
    the socket down (for every process sharing it) when it closes; its
    adopted TCP port does neither (``_shouldShutdown``). Either would leave
    every worker unreachable after one worker's restart (tests/test_workers.py
    pins both)."""

    _shouldShutdown = False

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """``endpoint``, listening on the inherited descriptor ``fd`` instead of
    binding: TLS and the server's own connection handling as ``endpoint``
    would have them."""

    def __init__(self, endpoint: IStreamServerEndpoint, fd: int, reactor):
        self._endpoint = endpoint
        self._fd = fd
        self._reactor = reactor
        #: the port, once listening (loadshare.AcceptBalancer pauses it)
        self.port: IListeningPort | None = None

    def listen(self, factory) -> defer.Deferred:
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory) -> IListeningPort:
        if isinstance(self._endpoint, ServerTLSEndpoint):
            factory = self._endpoint.wrap(factory)
        elif isinstance(self._endpoint, SSL4ServerEndpoint):
            raise ValueError(  # noqa: TRY004 (a configuration mistake, not a wrong type)
                "an ssl: endpoint must be hardened (tls.harden) before it is shared"
            )
        probe = socket.socket(fileno=self._fd)
        family = probe.family
        probe.detach()
        if family == socket.AF_UNIX:
            port = _AdoptedUNIXPort._fromListeningDescriptor(self._reactor, self._fd, factory)
            port.startListening()
        else:
            port = self._reactor.adoptStreamPort(self._fd, family, factory)
        # The port holds its own duplicate: closing it (a stop) must close the
        # worker's last reference.
        os.close(self._fd)
        self.port = port
        return port
