"""How frames from Redis reach the sockets, cheaply.

Measured on this stack (bench/README.md), a broadcast spent most of its time
not in framing but in ``transport.write()``: each call registers the socket
with epoll, waits for the next reactor turn, sends, and unregisters. Two
changes remove most of that:

- coalescing: frames for one socket are gathered until the end of the current
  reactor turn (a burst read from Redis at once becomes one write per socket);
- writing now: when nothing is queued in the transport, the bytes go straight
  to the socket with one ``send()``; only what the kernel does not take is
  left to ``transport.write()``, which keeps the order.

What the kernel does not take waits in the transport's buffer. A client that
stops reading would make that buffer grow without bound; past
WS4REDIS_MAX_BUFFERED_BYTES its connection is closed instead (1008). That
check is the protocol's (``WebSocketProtocol.sendData``, the one write path
for every byte to a websocket); the outbox hands its frames to it, joined in
writes of at most that many bytes (a frame larger than it alone), so that a
burst (a ws4redis.v2 replay of the history) meets the cap once the client's
buffers are full, and is not queued whole.
"""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor


def write_now(transport, data: bytes) -> None:
    """Write ``data`` to ``transport`` with a direct ``send()`` when that is
    safe (a plain TCP or UNIX socket with an empty buffer), else queue it."""
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or not isinstance(transport, FileDescriptor)
        or getattr(transport, "TLS", False)
        or not transport.connected
        or transport.disconnecting
        or transport._tempDataLen
        or len(transport.dataBuffer) > transport.offset
    ):
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Let the transport meet the error on its own terms (it will close).
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def socket_transport(transport) -> FileDescriptor | None:
    """The socket's own transport under ``transport``'s TLS (or other
    wrapping) layers; None when there is no socket."""
    while not isinstance(transport, FileDescriptor) and getattr(transport, "transport", None) is not None:
        transport = transport.transport
    return transport if isinstance(transport, FileDescriptor) else None


def buffered_bytes(transport) -> int:
    """Bytes written to ``transport`` that the kernel has not taken yet (the
    socket's transport under any TLS layer)."""
    if not isinstance(transport, FileDescriptor):  # plain TCP, the common case, without a call
        transport = socket_transport(transport)
        if transport is None:
            return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def joined(frames: list[bytes], most: int) -> list[bytes]:
    """``frames`` joined in order into writes of at most ``most`` bytes each
    (a frame larger than that is one write)."""
    if not frames:
        return []
    writes: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if run and size + len(frame) > most:
            writes.append(b"".join(run))
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    writes.append(run[0] if len(run) == 1 else b"".join(run))
    return writes


class Outbox:
    """Frames waiting for the end of the reactor turn, per websocket."""

    def __init__(self, reactor, max_write: int):
        """``max_write``: WS4REDIS_MAX_BUFFERED_BYTES, the most bytes joined in one write."""
        self._reactor = reactor
        self.max_write = max_write
        self._pending: dict = {}

    def put(self, protocol, frame: bytes) -> None:
        frames = self._pending.get(protocol)
        if frames is not None:
            frames.append(frame)
            return
        if not self._pending:
            self._reactor.callLater(0, self.flush)
        self._pending[protocol] = [frame]

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for protocol, frames in pending.items():
            # A socket closing since then must not send data after its close frame.
            if protocol.state != protocol.STATE_OPEN:
                continue
            if len(frames) == 1:  # a broadcast's common case: nothing to join
                protocol.sendData(frames[0])
                continue
            for data in joined(frames, self.max_write):
                protocol.sendData(data)
                if protocol.state != protocol.STATE_OPEN:
                    break  # closed past the cap: what remains is dropped
