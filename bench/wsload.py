"""Load generator for ws4redis-compatible servers (twisted_ws4redis, ws4redis).

One process drives thousands of websockets with a minimal client written on
asyncio's Protocol (handshake, frame parsing and masking only), so that the
client costs far less than the server it measures; its own CPU time is
reported with every scenario.

    python bench/wsload.py --url ws://127.0.0.1:8000/ws/ --redis redis://127.0.0.1:6379/0 \\
        --server-pid 1234 --scenarios connect,fanout -n 1000

Each scenario prints one JSON line on stdout; ``--summary`` adds a readable table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import resource
import socket
import struct
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import redis

PAYLOAD_SIZE = 100
#: Linux's socket option that leaves a bound socket's port to connect()
#: (Python names it from 3.12 on).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Why handshakes failed (open_clients), counted by reason.
FAILURES: collections.Counter = collections.Counter()
#: The websocket subprotocol every client offers (``--protocol v2``: ws4redis.v2), or None.
SUBPROTOCOL: str | None = None


# -- a minimal websocket client ---------------------------------------------------------


class Client(asyncio.Protocol):
    """One websocket. ``on_messages(payloads: list[bytes], arrival_ns: int)``
    gets the text and binary messages of each read at once (one call per read,
    not per message: the client must cost less than the server it measures);
    pings are answered; a close frame is echoed."""

    def __init__(self, host: str, path: str, cookie: str | None, on_messages):
        self.host, self.path, self.cookie, self.on_messages = host, path, cookie, on_messages
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport = None
        self._rest = b""
        self._handshaken = False

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        if SUBPROTOCOL:
            lines.append(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes):
        now = time.monotonic_ns()
        if self._rest:
            data, self._rest = self._rest + data, b""
        if not self._handshaken:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._rest = data
                return
            status = data[:12]
            data = data[end + 4 :]
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                self.transport.close()
                return
            self._handshaken = True
            self.opened.set_result(None)
        # The frames of this read, sliced out of ``data`` (bytes: one copy each).
        messages = []
        offset, size = 0, len(data)
        while size - offset >= 2:
            opcode = data[offset] & 0x0F
            length = data[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = struct.unpack_from(">H", data, offset + 2)[0]
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = struct.unpack_from(">Q", data, offset + 2)[0]
                header = 10
            end = offset + header + length
            if end > size:
                break
            if opcode in {1, 2}:
                messages.append(data[offset + header : end])
            elif opcode == 9:
                self._send(0xA, data[offset + header : end])
            elif opcode == 8:
                self._send(0x8, data[offset + header : offset + header + 2])
                self.transport.close()
            offset = end
        if offset < size:
            self._rest = data[offset:]
        if messages:
            self.on_messages(messages, now)

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport.is_closing():
            return  # the server closed it: counted as lost, not a client crash
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        self.transport.write(header + mask + masked)

    def send_text(self, text: bytes) -> None:
        self._send(0x1, text)

    def close(self) -> None:
        if self.transport and not self.transport.is_closing():
            self._send(0x8, struct.pack(">H", 1000))


# -- what is measured --------------------------------------------------------------------


class Target:
    """The server under test, its Redis, and how to log in to it."""

    def __init__(self, args: argparse.Namespace):
        parts = urllib.parse.urlsplit(args.url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.redis = redis.Redis.from_url(args.redis)
        self.prefix = f"{args.prefix}:" if args.prefix else ""
        #: the server's processes (``--server-pid 1,2``: a supervisor's workers), summed
        self.server_pids = [int(pid) for pid in str(args.server_pid).split(",") if pid] if args.server_pid else []
        #: the local address every socket binds (``--source``), or None
        self.local_addr = (args.source, 0) if args.source else None
        self.login_url, self.username, self.password = args.login_url, args.username, args.password

    async def connect(self, factory) -> tuple:
        """A connection to the server, from ``--source`` if given: (transport, protocol)."""
        loop = asyncio.get_running_loop()
        if self.local_addr is None:
            return await loop.create_connection(factory, self.host, self.port)
        # bind() with port 0 picks a port no socket holds, searching past the
        # bound ones (at 19,500 sockets, milliseconds of the client's CPU per
        # connection); with IP_BIND_ADDRESS_NO_PORT, connect() picks it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind(self.local_addr)
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return await loop.create_connection(factory, sock=sock)

    def path(self, facility: str, flags: str) -> str:
        return f"{self.base_path}{facility}?{flags}"

    def channel(self, facility: str) -> str:
        return f"{self.prefix}broadcast:{facility}"

    def rss_kib(self) -> int | None:
        """The server's resident memory, summed over its processes."""
        return sum(map(rss_kib, self.server_pids)) if self.server_pids else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server (all its processes) has used so far."""
        return sum(map(cpu_seconds, self.server_pids)) if self.server_pids else None

    def redis_clients(self) -> int:
        return int(self.redis.info("clients")["connected_clients"])

    def wait_subscribers(self, facility: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while dict(self.redis.pubsub_numsub(self.channel(facility))).get(self.channel(facility).encode(), 0) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody subscribed {self.channel(facility)}")
            time.sleep(0.01)

    def session_cookie(self) -> str:
        """Log in through Django's login form (CSRF and all); the Cookie header."""
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(self.login_url, timeout=10).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode(
            {"username": self.username, "password": self.password, "csrfmiddlewaretoken": token}
        ).encode()
        opener.open(
            urllib.request.Request(self.login_url, data=data, headers={"Referer": self.login_url}), timeout=10
        ).read()
        cookies = {cookie.name: cookie.value for cookie in jar}
        if "sessionid" not in cookies:
            raise RuntimeError(f"login as {self.username!r} at {self.login_url} failed")
        return "; ".join(f"{name}={value}" for name, value in cookies.items())


def rss_kib(pid: int) -> int:
    """A process' resident memory (``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stamp(sequence: int) -> bytes:
    """A message carrying its sequence number and send time, PAYLOAD_SIZE bytes long."""
    head = f"{sequence}:{time.monotonic_ns()}:".encode()
    return head + b"x" * (PAYLOAD_SIZE - len(head))


def unstamp(payload: bytes) -> tuple[int, int] | None:
    """(sequence, send time) of one of our messages; None for anything else
    (heartbeats, persisted welcome messages, ws4redis.v2 replies). A
    ws4redis.v2 ``message`` op is taken apart for its data."""
    if payload[:1] == b"{":
        # Not json.loads (~3 µs): a stamp has no quote or escape, so its text
        # is between '"data":"' and the next quote.
        start = payload.find(b'"data":"')
        if not payload.startswith(b'{"op":"message"') or start < 0:
            return None
        payload = payload[start + 8 : payload.index(b'"', start + 8)]
    parts = payload.split(b":", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


class Deliveries:
    """Counts our messages as they arrive; their latencies are worked out
    after the measured phase (``latency_ms``), so that the client's cost per
    delivery is a list append."""

    def __init__(self):
        # Persisted messages of earlier runs replay on connect: not ours.
        self.since_ns = time.monotonic_ns()
        #: (arrival time, payloads that look like stamps) per read
        self.reads: list[tuple[int, list[bytes]]] = []
        self.count = 0
        self.last_ns = 0
        self.done = asyncio.Event()
        self.expected = None

    def __call__(self, payloads: list[bytes], arrival_ns: int) -> None:
        # A stamp begins with its sequence number; a ws4redis.v2 message op with '{"op":"message"'.
        ours = [payload for payload in payloads if payload[:1].isdigit() or payload.startswith(b'{"op":"message"')]
        if not ours:
            return
        self.reads.append((arrival_ns, ours))
        self.count += len(ours)
        self.last_ns = arrival_ns
        if self.expected is not None and self.count >= self.expected:
            self.done.set()

    def expect(self, count: int) -> None:
        """``count`` more of our messages are to come."""
        self.expected = self.count + count

    def latencies_ns(self) -> list[int]:
        """The latency of each of our messages sent since this was made."""
        found = []
        for arrival_ns, payloads in self.reads:
            for payload in payloads:
                stamped = unstamp(payload)
                if stamped is not None and stamped[1] >= self.since_ns:
                    found.append(arrival_ns - stamped[1])
        return found

    def latency_ms(self, latencies_ns: list[int]) -> dict:
        if not latencies_ns:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        ordered = sorted(latencies_ns)
        return {
            "p50_ms": round(ordered[len(ordered) // 2] / 1e6, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6, 2),
            "max_ms": round(ordered[-1] / 1e6, 2),
        }


class Phase:
    """The CPU the client and the server used over a measured phase, as a
    share of its wall time: a client near 100 % makes the figure a lower
    bound of what the server can do."""

    def __init__(self, target: Target):
        self.target = target
        self.client = time.process_time()
        self.server = target.cpu_seconds()

    def busy(self, seconds: float, count: int | None = None, unit: str = "") -> dict:
        """The shares over ``seconds``; with ``count``, the server's µs per ``unit`` too."""
        found = {"client_busy_pct": round(100 * (time.process_time() - self.client) / seconds, 1)}
        if self.server is not None:
            server = self.target.cpu_seconds() - self.server
            found["server_busy_pct"] = round(100 * server / seconds, 1)
            if count:
                found[f"server_cpu_us_per_{unit}"] = round(1e6 * server / count, 2)
        return found


async def open_clients(
    target: Target, count: int, path: str, on_messages=None, cookie: str | None = None, concurrency: int = 100
) -> tuple[list[Client], int, float]:
    """Open ``count`` websockets, ``concurrency`` handshakes at a time;
    (clients, failures, seconds)."""
    gate = asyncio.Semaphore(concurrency)
    ignore = on_messages or (lambda payloads, arrival: None)

    async def one() -> Client | None:
        async with gate:
            try:
                _, client = await target.connect(lambda: Client(f"{target.host}:{target.port}", path, cookie, ignore))
                await asyncio.wait_for(client.opened, 30)
                return client
            except (TimeoutError, OSError) as exc:
                FAILURES[f"{type(exc).__name__}: {exc}"[:80]] += 1
                return None

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.monotonic() - started
    clients = [client for client in results if client is not None]
    return clients, count - len(clients), elapsed


async def close_all(clients: list[Client]) -> None:
    for client in clients:
        client.close()
    await asyncio.wait(
        [asyncio.ensure_future(asyncio.wait_for(c.closed, 10)) for c in clients]
        or [asyncio.ensure_future(asyncio.sleep(0))]
    )


async def idle_sockets(target: Target, args, facility: str) -> dict:
    """Open ``args.n`` websockets on ``facility``: handshakes/s, and what each
    idle socket costs the server (its RSS growth per socket, once open)."""
    before = target.rss_kib()
    phase = Phase(target)
    clients, failures, elapsed = await open_clients(target, args.n, target.path(facility, "subscribe-broadcast"))
    busy = phase.busy(elapsed, len(clients), "handshake")
    target.wait_subscribers(facility)
    await asyncio.sleep(1)
    after = target.rss_kib()
    result = {
        "handshakes_per_s": round(len(clients) / elapsed, 1),
        "failures": failures,
        "seconds": round(elapsed, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "redis_clients": target.redis_clients(),
        "kib_per_connection": round((after - before) / max(1, len(clients)), 2) if before else None,
        **busy,
    }
    await close_all(clients)
    return result


async def scenario_connect(target: Target, args) -> dict:
    return await idle_sockets(target, args, "bench-connect")


async def scenario_persisted(target: Target, args) -> dict:
    """As connect, on a facility with a persisted message (ws4redis' SETEX),
    which each socket gets as it opens."""
    target.redis.set(target.channel("bench-persisted"), stamp(0), ex=3600)
    return await idle_sockets(target, args, "bench-persisted")


async def scenario_fanout(target: Target, args) -> dict:
    deliveries = Deliveries()
    clients, failures, _ = await open_clients(
        target, args.n, target.path("bench-fanout", "subscribe-broadcast"), deliveries
    )
    target.wait_subscribers("bench-fanout")
    await asyncio.sleep(0.5)
    expected = len(clients) * args.messages
    deliveries.expect(expected)
    before = deliveries.count
    pipe = target.redis.pipeline(transaction=False)
    phase = Phase(target)
    first_ns = time.monotonic_ns()
    if args.interval:
        # One broadcast at a time: the latency of a single message to everyone.
        for sequence in range(args.messages):
            target.redis.publish(target.channel("bench-fanout"), stamp(sequence))
            await asyncio.sleep(args.interval)
    else:
        # A burst: every message at once.
        for sequence in range(args.messages):
            pipe.publish(target.channel("bench-fanout"), stamp(sequence))
        pipe.execute()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(deliveries.done.wait(), args.timeout)
    span = max(1, deliveries.last_ns - first_ns) / 1e9
    busy = phase.busy(span, deliveries.count - before, "delivery")
    latencies = deliveries.latencies_ns()
    result = {
        "subscribers": len(clients),
        "failures": failures,
        "messages": args.messages,
        "deliveries": len(latencies),
        "lost": expected - len(latencies),
        "deliveries_per_s": round(len(latencies) / span),
        **deliveries.latency_ms(latencies),
        **busy,
    }
    await close_all(clients)
    return result


async def scenario_chat(target: Target, args) -> dict:
    deliveries = Deliveries()
    clients, failures, _ = await open_clients(
        target, args.chat_clients, target.path("bench-chat", "subscribe-broadcast&publish-broadcast&echo"), deliveries
    )
    target.wait_subscribers("bench-chat")
    await asyncio.sleep(0.5)
    expected = len(clients) * len(clients) * args.chat_messages
    deliveries.expect(expected)
    before = deliveries.count
    phase = Phase(target)
    first_ns = time.monotonic_ns()
    sequence = 0
    for _ in range(args.chat_messages):
        for client in clients:
            client.send_text(stamp(sequence))
            sequence += 1
        await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(deliveries.done.wait(), args.timeout)
    span = max(1, deliveries.last_ns - first_ns) / 1e9
    busy = phase.busy(span, deliveries.count - before, "delivery")
    latencies = deliveries.latencies_ns()
    result = {
        "clients": len(clients),
        "failures": failures,
        "sent": sequence,
        "deliveries": len(latencies),
        "lost": expected - len(latencies),
        "deliveries_per_s": round(len(latencies) / span),
        **deliveries.latency_ms(latencies),
        **busy,
    }
    await close_all(clients)
    return result


async def scenario_churn(target: Target, args) -> dict:
    await asyncio.sleep(1)
    rss_before, clients_before = target.rss_kib(), target.redis_clients()
    channel = target.channel("bench-churn")
    stop = time.monotonic() + args.churn_seconds
    done = 0
    failed = 0

    async def publisher():
        while time.monotonic() < stop + 1:
            target.redis.publish(channel, stamp(0))
            await asyncio.sleep(0.005)

    async def worker():
        nonlocal done, failed
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop:
            got = loop.create_future()

            def on_messages(payloads, arrival, got=got):
                if not got.done() and any(unstamp(payload) for payload in payloads):
                    got.set_result(None)

            try:
                _, client = await target.connect(
                    lambda: Client(
                        f"{target.host}:{target.port}",
                        target.path("bench-churn", "subscribe-broadcast"),
                        None,
                        on_messages,
                    )
                )
                await asyncio.wait_for(client.opened, 10)
                await asyncio.wait_for(got, 10)
                client.close()
                await asyncio.wait_for(client.closed, 10)
                done += 1
            except (TimeoutError, OSError):
                failed += 1

    publishing = asyncio.ensure_future(publisher())
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.churn_workers)))
    elapsed = time.monotonic() - started
    await publishing
    await asyncio.sleep(2)
    rss_after, clients_after = target.rss_kib(), target.redis_clients()
    return {
        "connections_per_s": round(done / elapsed, 1),
        "connections": done,
        "failures": failed,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2) if rss_before else None,
        "redis_clients_before": clients_before,
        "redis_clients_after": clients_after,
    }


async def scenario_session(target: Target, args) -> dict:
    cookie = target.session_cookie()
    phase = Phase(target)
    clients, failures, elapsed = await open_clients(
        target, args.n, target.path("bench-session", "subscribe-user"), cookie=cookie
    )
    result = {
        "handshakes_per_s": round(len(clients) / elapsed, 1),
        "failures": failures,
        "seconds": round(elapsed, 2),
        **phase.busy(elapsed, len(clients), "handshake"),
    }
    await close_all(clients)
    return result


async def command(expected: str) -> list[str]:
    """The next line on stdin (from the orchestrator), split; it must begin with ``expected``."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    words = line.split()
    if not words or words[0] != expected:
        raise SystemExit(f"wsload: expected {expected!r} on stdin, got {line!r}")
    return words[1:]


async def scenario_hold(target: Target, args) -> dict:
    """One of several load processes that an orchestrator (bench/workers.py)
    drives together: open ``args.n`` sockets on bench-fanout and print a
    ``held`` line; on ``burst M`` (stdin) count M messages to every socket,
    published by the orchestrator, and print a ``burst`` line; on ``close``,
    close them. The times are CLOCK_MONOTONIC's, which every process shares."""
    deliveries = Deliveries()
    cpu = time.process_time()
    started_ns = time.monotonic_ns()
    clients, failures, elapsed = await open_clients(
        target, args.n, target.path("bench-fanout", "subscribe-broadcast"), deliveries
    )
    ended_ns = time.monotonic_ns()
    print(
        json.dumps(
            {
                "scenario": "hold",
                "phase": "held",
                "n": args.n,
                "held": len(clients),
                "failures": failures,
                "failure_reasons": dict(FAILURES),
                "started_ns": started_ns,
                "ended_ns": ended_ns,
                "handshakes_per_s": round(len(clients) / elapsed, 1),
                "client_cpu_s": round(time.process_time() - cpu, 3),
            }
        ),
        flush=True,
    )
    # The burst may begin to arrive before its command is read.
    before = deliveries.count
    words = await command("burst")
    messages = int(words[0])
    cpu = time.process_time()
    deliveries.expected = before + len(clients) * messages
    if deliveries.count >= deliveries.expected:
        deliveries.done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(deliveries.done.wait(), args.timeout)
    print(
        json.dumps(
            {
                "scenario": "hold",
                "phase": "burst",
                "held": len(clients),
                "messages": messages,
                "deliveries": deliveries.count - before,
                "lost": len(clients) * messages - (deliveries.count - before),
                **received(clients, deliveries, time.process_time() - cpu),
            }
        ),
        flush=True,
    )
    await command("close")
    await close_all(clients)
    return {"held": len(clients)}


def received(clients: list, deliveries: Deliveries, client_cpu: float) -> dict:
    """What a driven scenario's line says of the deliveries it counted."""
    latencies = deliveries.latencies_ns()
    return {
        "stamped": len(latencies),
        "still_open": sum(not client.closed.done() for client in clients),
        "first_ns": deliveries.reads[0][0] if deliveries.reads else None,
        "last_ns": deliveries.last_ns,
        "client_cpu_s": round(client_cpu, 3),
        **deliveries.latency_ms(latencies),
    }


async def scenario_facilities(target: Target, args) -> dict:
    """Driven over stdin by bench/cluster.py: ``args.n`` sockets spread over
    ``args.facilities`` facilities (socket i on ``bench-f<i mod F>``, so that
    the channels fall on every shard of a cluster), then a ``held`` line; on
    ``start``, count from zero; on ``expect M SECONDS``, wait until M of our
    messages arrived, none arrived for ``--quiet`` seconds, or SECONDS passed,
    and print a ``window`` line; on ``close``, close them."""
    deliveries = Deliveries()
    cpu = time.process_time()
    started_ns = time.monotonic_ns()
    gate_clients = []
    for index in range(args.facilities):
        share = args.n // args.facilities + (index < args.n % args.facilities)
        gate_clients.append(
            open_clients(
                target,
                share,
                target.path(f"bench-f{index}", "subscribe-broadcast"),
                deliveries,
                concurrency=max(1, 100 // args.facilities),
            )
        )
    opened = await asyncio.gather(*gate_clients)
    clients = [client for found, _, _ in opened for client in found]
    failures = sum(failed for _, failed, _ in opened)
    print(
        json.dumps(
            {
                "scenario": "facilities",
                "phase": "held",
                "n": args.n,
                "held": len(clients),
                "failures": failures,
                "failure_reasons": dict(FAILURES),
                "handshakes_s": round((time.monotonic_ns() - started_ns) / 1e9, 2),
                "client_cpu_s": round(time.process_time() - cpu, 3),
            }
        ),
        flush=True,
    )
    await command("start")
    deliveries.reads.clear()
    deliveries.count, deliveries.last_ns = 0, 0
    deliveries.since_ns = time.monotonic_ns()
    cpu = time.process_time()
    words = await command("expect")
    expected, timeout = int(words[0]), float(words[1])
    deadline = time.monotonic() + timeout
    while deliveries.count < expected and time.monotonic() < deadline:
        last = deliveries.count
        await asyncio.sleep(args.quiet)
        if deliveries.count == last:
            break
    print(
        json.dumps(
            {
                "scenario": "facilities",
                "phase": "window",
                "held": len(clients),
                "deliveries": deliveries.count,
                **received(clients, deliveries, time.process_time() - cpu),
            }
        ),
        flush=True,
    )
    await command("close")
    await close_all(clients)
    return {"held": len(clients)}


SCENARIOS = {
    "connect": scenario_connect,
    "persisted": scenario_persisted,
    "fanout": scenario_fanout,
    "chat": scenario_chat,
    "churn": scenario_churn,
    "session": scenario_session,
    "hold": scenario_hold,
    "facilities": scenario_facilities,
}


async def run(args) -> list[dict]:
    target = Target(args)
    results = []
    for name in args.scenarios.split(","):
        cpu = time.process_time()
        wall = time.monotonic()
        result = {"scenario": name, "n": args.n, **await SCENARIOS[name](target, args)}
        result["client_cpu_s"] = round(time.process_time() - cpu, 2)
        result["wall_s"] = round(time.monotonic() - wall, 2)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="websocket base URL, e.g. ws://127.0.0.1:8000/ws/")
    parser.add_argument("--redis", required=True, help="the server's Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="", help="the server's WS4REDIS_PREFIX")
    parser.add_argument(
        "--server-pid",
        help="server process, for its RSS and CPU; several, comma-separated (the workers of --workers), are summed",
    )
    parser.add_argument(
        "--source",
        help="local address every socket binds, e.g. 127.0.0.2: each source address "
        "has its own ephemeral ports (ip_local_port_range) towards one server port",
    )
    parser.add_argument("--scenarios", default="connect,persisted,fanout,chat,churn,session")
    parser.add_argument(
        "--protocol",
        choices=("ws4redis", "v2"),
        default="ws4redis",
        help="the wire every socket speaks: ws4redis, or ws4redis.v2 (JSON ops)",
    )
    parser.add_argument("-n", type=int, default=1000, help="connections (connect, fanout, session)")
    parser.add_argument("--messages", type=int, default=100, help="fanout: messages published")
    parser.add_argument("--interval", type=float, default=0, help="fanout: seconds between messages (0: one burst)")
    parser.add_argument("--chat-clients", type=int, default=100)
    parser.add_argument("--chat-messages", type=int, default=10, help="chat: messages sent by each client")
    parser.add_argument("--churn-seconds", type=float, default=10)
    parser.add_argument("--churn-workers", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60, help="longest wait for deliveries")
    parser.add_argument("--facilities", type=int, default=300, help="facilities: how many the sockets are spread over")
    parser.add_argument(
        "--quiet",
        type=float,
        default=2.0,
        help="facilities: seconds without a delivery after which the count is taken as final",
    )
    parser.add_argument("--login-url", help="session: Django login page, e.g. http://127.0.0.1:8000/accounts/login/")
    parser.add_argument("--username", default="john")
    parser.add_argument("--password", default="secret")
    args = parser.parse_args(argv)
    # One descriptor per socket: the soft open files limit up to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and max(args.n, args.chat_clients) + 100 > hard:
        parser.error(f"-n {args.n} needs more open files than this process may have ({hard}); raise 'ulimit -Hn'")
    global SUBPROTOCOL
    SUBPROTOCOL = "ws4redis.v2" if args.protocol == "v2" else None
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
