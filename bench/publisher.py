"""A paced publisher cheap enough not to be the bottleneck (bench/cluster.py):
pre-encoded RESP commands, one non-blocking socket per Redis node, pipelined.

    python bench/publisher.py --command SPUBLISH --rate 100000 --seconds 5 \\
        --plan '[[7000, ["demo:broadcast:bench-f0", ...]], [7001, [...]], ...]'

``--plan`` gives each node (a port on 127.0.0.1) the channels it owns (for
SPUBLISH, the masters of their slots: redis.crc.key_slot); each node gets
its share of ``--rate`` in proportion to its channels, and cycles through
them. Every ``--tick`` seconds the messages due are written: each one is a
100-byte stamp (wsload.py's form: tick number, send time on CLOCK_MONOTONIC,
zero-padded) so the clients can work latencies out. What a node has not
taken yet (TCP's back-pressure: Redis reading slower than offered) waits in
this process up to ``--backlog`` bytes per node; past that a tick's messages
for that node are not sent (``not_sent``). Replies are counted, not parsed:
each is one line; ``:0`` (no subscriber heard it) and errors are counted apart.
At the end it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time

PAYLOAD_SIZE = 100


def encode(command: bytes, channel: str) -> bytes:
    """A command's RESP bytes up to its payload (whose length is fixed)."""
    name = channel.encode()
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n" % (len(command), command, len(name), name, PAYLOAD_SIZE)


def stamp(tick: int) -> bytes:
    head = b"%010d:%019d:" % (tick, time.monotonic_ns())
    return head + b"x" * (PAYLOAD_SIZE - len(head)) + b"\r\n"


class Node:
    def __init__(self, port: int, channels: list[str], command: bytes, share: float):
        self.port = port
        prefixes = [encode(command, channel) for channel in channels]
        # Repeated so that any window of up to len(prefixes) * 50 is one slice.
        self.cycle = prefixes * 51
        self.width = len(prefixes)
        self.position = 0
        self.share = share  # messages per second
        self.due = 0.0
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.generated = self.sent = self.not_sent = 0
        self.replies = self.unheard = self.errors = 0
        self.last_reply_ns = 0

    def messages(self, count: int, tick: int) -> bytes:
        """``count`` commands (count <= width * 50), the next channels in turn."""
        start = self.position
        self.position = (start + count) % self.width
        payload = stamp(tick)
        return payload.join(self.cycle[start : start + count]) + payload

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError(f"node {self.port} closed the connection")
        self.replies += data.count(b"\r\n")
        self.unheard += data.count(b":0\r\n")
        self.errors += data.count(b"-")  # a reply line of an error; integer replies have no '-'
        self.last_reply_ns = time.monotonic_ns()

    def write(self) -> None:
        if self.out:
            try:
                done = self.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True, help="JSON: [[port, [channel, ...]], ...]")
    parser.add_argument("--command", default="PUBLISH", choices=("PUBLISH", "SPUBLISH"))
    parser.add_argument("--rate", type=float, required=True, help="messages per second, all nodes together")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--tick", type=float, default=0.002)
    parser.add_argument("--backlog", type=int, default=4 << 20, help="bytes waiting per node before ticks are skipped")
    parser.add_argument("--drain", type=float, default=30, help="longest wait for the last replies")
    args = parser.parse_args()
    plan = json.loads(args.plan)
    total = sum(len(channels) for _, channels in plan)
    nodes = [
        Node(port, channels, args.command.encode(), args.rate * len(channels) / total)
        for port, channels in plan
        if channels
    ]
    selector = selectors.DefaultSelector()
    for node in nodes:
        selector.register(node.sock, selectors.EVENT_READ, node)
    cpu = time.process_time()
    started_ns = time.monotonic_ns()
    start = time.monotonic()
    end = start + args.seconds
    tick = 0
    next_tick = last = start
    size = None
    while True:
        now = time.monotonic()
        if now >= next_tick and now < end:
            # The messages due since the last tick (a late tick catches up, up to one second's worth).
            elapsed, last = min(1.0, now - last), now
            for node in nodes:
                node.due += node.share * elapsed
                count = min(int(node.due), node.width * 50)
                node.due -= count
                if not count:
                    continue
                node.generated += count
                if len(node.out) > args.backlog:
                    node.not_sent += count
                    continue
                chunk = node.messages(count, tick)
                size = size or len(chunk) // count
                node.out += chunk
            tick += 1
            next_tick += args.tick
            if next_tick < now:
                next_tick = now + args.tick
        elif now >= end:
            waiting = [node for node in nodes if node.out or node.replies < node.generated - node.not_sent]
            if not waiting or now > end + args.drain:
                break
        for node in nodes:
            node.write()
        timeout = max(0.0, min(next_tick, end) - time.monotonic()) if now < end else 0.05
        for key, _ in selector.select(timeout):
            key.data.read()
    window_end_ns = started_ns + int(args.seconds * 1e9)
    last_ns = max(node.last_reply_ns for node in nodes)
    sent = [node.generated - node.not_sent - len(node.out) // (size or 1) for node in nodes]
    result = {
        "command": args.command,
        "rate": args.rate,
        "seconds": args.seconds,
        "started_ns": started_ns,
        "last_reply_ns": last_ns,
        "generated": sum(node.generated for node in nodes),
        "not_sent": sum(node.not_sent for node in nodes),
        "sent": sum(sent),
        "replies": sum(node.replies for node in nodes),
        "unheard": sum(node.unheard for node in nodes),
        "errors": sum(node.errors for node in nodes),
        "per_node": [
            {
                "port": node.port,
                "channels": node.width,
                "generated": node.generated,
                "not_sent": node.not_sent,
                "replies": node.replies,
                "unheard": node.unheard,
            }
            for node in nodes
        ],
        "span_s": round(max(last_ns - started_ns, 1) / 1e9, 3),
        "late_s": round(max(0, last_ns - window_end_ns) / 1e9, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
