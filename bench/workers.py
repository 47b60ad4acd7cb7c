"""``make bench-workers``: ``twistd ws4redis --workers 2`` against one process
(no ``--workers``): sockets held, handshakes/s and one burst's deliveries/s,
each at every size, a fresh server per measurement, the two kinds
alternating within each round.

    python bench/workers.py --sizes 5000,full --runs 3 --out bench/workers-results.md

``full`` is as many sockets as the server's processes may hold: 19,500 each
(``--per-process``), so 19,500 for one process and 39,000 for two workers.
Nothing is pinned: two workers need both cores, so the load generator shares
them (its CPU is reported beside every figure). The load is ``--loaders``
processes of bench/wsload.py (scenario ``hold``), each under its own open
files limit and binding its own source address (127.0.0.2, 127.0.0.3, ...:
one address has only ``ip_local_port_range``'s ports towards one server
port); this script publishes the burst once every one of them holds its
sockets, and sums what they count. The server's CPU and memory are read
from ``/proc`` for each worker (the supervisor's apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from run import CLIENT_BOUND_PCT, ROOT, number, prepare_project, serving
from wsload import cpu_seconds, rss_kib, stamp

#: The sockets one process holds at most here: its open files limit is 20,000.
PER_PROCESS = 19_500
CHANNEL = "demo:broadcast:bench-fanout"

#: (key, heading) of the table's rows.
ROWS = [
    ("held", "sockets held"),
    ("failures", "refused or failed"),
    ("per_worker", "sockets per worker"),
    ("handshakes_per_s", "handshakes/s"),
    ("server_us_per_handshake", "server µs/handshake (workers summed)"),
    ("supervisor_us_per_handshake", "supervisor µs/handshake"),
    ("handshake_client_pct", "handshakes: client CPU % (of one core, loaders summed)"),
    ("handshake_server_pct", "handshakes: server CPU % (of one core, workers summed)"),
    ("rss_mib_per_worker", "RSS per worker, MiB (sockets held)"),
    ("kib_per_socket", "KiB/socket (RSS growth, workers summed)"),
    ("deliveries_per_s", "burst deliveries/s (100 messages)"),
    ("lost", "lost"),
    ("p50_ms", "burst p50 ms"),
    ("p99_ms", "burst p99 ms"),
    ("server_us_per_delivery", "server µs/delivery (workers summed)"),
    ("burst_client_pct", "burst: client CPU % (loaders summed)"),
    ("burst_server_pct", "burst: server CPU % (workers summed)"),
    ("errors", "server log: error and critical lines"),
    ("warnings", "server log: warnings"),
]


def socket_fds(pid: int) -> int:
    """The sockets among a process' descriptors."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += fd.readlink().name.startswith("socket:")
    return count


class Loader:
    """One wsload.py process of scenario ``hold``: its stdout's lines, read by a thread."""

    def __init__(self, server, size: int, source: str, timeout: float, stderr):
        self.spawn(
            [
                f"--url=ws://127.0.0.1:{server.port}/ws/",
                f"--redis=redis://127.0.0.1:{server.redis_port}/0",
                "--prefix=demo",
                "--scenarios=hold",
                f"-n={size}",
                f"--source={source}",
                f"--timeout={timeout}",
            ],
            stderr,
        )

    def spawn(self, arguments: list[str], stderr) -> None:
        """Start wsload.py with ``arguments`` and the thread that reads its lines."""
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "wsload.py"), *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, phase: str, timeout: float) -> dict:
        """The next JSON line of ``phase``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no {phase!r} line from wsload in {timeout} s") from None
            if line is None:
                raise RuntimeError(f"wsload exited ({self.process.wait()}) before its {phase!r} line")
            found = json.loads(line)
            if found.get("phase") == phase:
                return found

    def tell(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(env: dict, workers: int | None, size: int, args, work: Path) -> dict:
    """One fresh server (``workers`` or one process), ``size`` sockets over
    the loaders: the figures of one run."""
    results: list[dict] = []
    shares = [size // args.loaders + (index < size % args.loaders) for index in range(args.loaders)]
    with serving(env, results, workers=workers, cpus=None) as server, open(work / "wsload.err", "a") as stderr:
        pids = server.pids
        db = redis.Redis(port=server.redis_port)
        time.sleep(1)
        rss_before = [rss_kib(pid) for pid in pids]
        sockets_before = [socket_fds(pid) for pid in pids]
        cpu_before, supervisor_before = [cpu_seconds(pid) for pid in pids], cpu_seconds(server.pid)
        loaders = [
            Loader(server, share, f"127.0.0.{2 + index}", args.timeout, stderr) for index, share in enumerate(shares)
        ]
        try:
            held = [loader.expect("held", args.connect_timeout) for loader in loaders]
            cpu_held, supervisor_held = [cpu_seconds(pid) for pid in pids], cpu_seconds(server.pid)
            time.sleep(1)
            rss_held = [rss_kib(pid) for pid in pids]
            per_worker = [socket_fds(pid) - before for pid, before in zip(pids, sockets_before, strict=False)]
            subscribed = dict(db.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0)
            # The burst: published at once, once every loader holds its sockets.
            cpu_burst = [cpu_seconds(pid) for pid in pids]
            pipe = db.pipeline(transaction=False)
            for sequence in range(args.messages):
                pipe.publish(CHANNEL, stamp(sequence))
            for loader in loaders:
                loader.tell(f"burst {args.messages}")
            first_ns = time.monotonic_ns()
            pipe.execute()
            bursts = [loader.expect("burst", args.timeout + 30) for loader in loaders]
            cpu_after = [cpu_seconds(pid) for pid in pids]
            for loader in loaders:
                loader.tell("close")
            for loader in loaders:
                loader.process.wait(60)
        finally:
            for loader in loaders:
                loader.stop()
        db.close()
    count = sum(found["held"] for found in held)
    span = (max(found["ended_ns"] for found in held) - min(found["started_ns"] for found in held)) / 1e9
    deliveries = sum(found["deliveries"] for found in bursts)
    burst_span = max(1, max(found["last_ns"] for found in bursts) - first_ns) / 1e9
    log = results[0]
    handshake_cpu = [after - before for before, after in zip(cpu_before, cpu_held, strict=False)]
    burst_cpu = [after - before for before, after in zip(cpu_burst, cpu_after, strict=False)]
    return {
        "workers": workers or 1,
        "size": size,
        "held": count,
        "failures": sum(found["failures"] for found in held),
        "failure_reasons": [found["failure_reasons"] for found in held],
        "per_worker": per_worker,
        "redis_subscribers": subscribed,
        "handshakes_per_s": round(count / span, 1),
        "server_us_per_handshake": round(1e6 * sum(handshake_cpu) / max(1, count), 1),
        "supervisor_us_per_handshake": round(1e6 * (supervisor_held - supervisor_before) / max(1, count), 1)
        if workers
        else None,
        "handshake_client_pct": round(100 * sum(found["client_cpu_s"] for found in held) / span, 1),
        "handshake_server_pct": round(100 * sum(handshake_cpu) / span, 1),
        "handshake_cpu_s_per_worker": [round(seconds, 2) for seconds in handshake_cpu],
        "rss_mib_per_worker": [round(kib / 1024, 1) for kib in rss_held],
        "kib_per_socket": round((sum(rss_held) - sum(rss_before)) / max(1, count), 2),
        "deliveries_per_s": round(deliveries / burst_span),
        "deliveries": deliveries,
        "lost": sum(found["lost"] for found in bursts),
        "p50_ms": max(found["p50_ms"] or 0 for found in bursts),
        "p99_ms": max(found["p99_ms"] or 0 for found in bursts),
        "server_us_per_delivery": round(1e6 * sum(burst_cpu) / max(1, deliveries), 3),
        "burst_cpu_s_per_worker": [round(seconds, 2) for seconds in burst_cpu],
        "burst_client_pct": round(100 * sum(found["client_cpu_s"] for found in bursts) / burst_span, 1),
        "burst_server_pct": round(100 * sum(burst_cpu) / burst_span, 1),
        "errors": log["errors"],
        "warnings": log["warnings"],
        "excerpt": log["excerpt"],
        "handshake_seconds": round(span, 2),
        "burst_seconds": round(burst_span, 3),
    }


def cell(runs: list[dict], key: str) -> str:
    """The median of the runs (min–max), or each run's value for a list (one per worker)."""
    values = [run[key] for run in runs if run.get(key) is not None]
    if not values:
        return "–"
    if isinstance(values[0], list):
        return "; ".join(" / ".join(number(value) for value in found) for found in values)
    median = statistics.median(values)
    spread = f" ({number(min(values))}–{number(max(values))})" if min(values) != max(values) else ""
    return f"{number(median)}{spread}"


def table(columns: dict[str, list[dict]], runs: int) -> str:
    names = list(columns)
    lines = [f"| median of {runs} runs (min–max) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, heading in ROWS:
        cells = []
        for name in names:
            text = cell(columns[name], key)
            client = "burst_client_pct" if key == "deliveries_per_s" else "handshake_client_pct"
            if (
                key.endswith("_per_s")
                and statistics.median(run[client] for run in columns[name]) >= CLIENT_BOUND_PCT * 2
            ):
                text = "≥ " + text  # both loaders' cores busy
            cells.append(text)
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rounds: list[dict[str, dict]], sizes: list[str], count: int) -> str:
    """Per round, --workers N's figure over one process' at the same size (their median, min–max)."""
    lines = [
        f"| {count} workers ÷ 1 process, same round (median, min–max) | " + " | ".join(sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for key, heading in (
        ("held", "sockets held"),
        ("handshakes_per_s", "handshakes/s"),
        ("deliveries_per_s", "burst deliveries/s"),
        ("server_us_per_delivery", "server µs/delivery"),
    ):
        cells = []
        for size in sizes:
            found = [round(one[(count, size)][key] / one[(1, size)][key], 2) for one in rounds if one[(1, size)][key]]
            cells.append(cell([{"x": value} for value in found], "x"))
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_rounds(
    runs: int, points: list[tuple[object, str]], measure_one: Callable[[object], dict], work: Path
) -> list[dict]:
    """``runs`` rounds of ``measure_one(key)`` for every (key, label) of
    ``points``, in order, each round a dict by key; what the loaders wrote to
    their stderr (``work``/wsload.err), if anything, printed at the end."""
    rounds: list[dict] = []
    for number_ in range(runs):
        one = {}
        for key, label in points:
            print(f"round {number_ + 1} of {runs}: {label}", file=sys.stderr, flush=True)
            one[key] = measure_one(key)
            print(json.dumps(one[key]), file=sys.stderr, flush=True)
        rounds.append(one)
    errors = (work / "wsload.err").read_text() if (work / "wsload.err").exists() else ""
    if errors.strip():
        print(f"wsload.py's stderr:\n{errors[-3000:]}", file=sys.stderr)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,full", help="sockets; 'full': --per-process for each process")
    parser.add_argument("--workers", type=int, default=2, help="the --workers measured against one process")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loaders", type=int, default=2, help="wsload.py processes (each its own source address)")
    parser.add_argument("--per-process", type=int, default=PER_PROCESS)
    parser.add_argument("--messages", type=int, default=100, help="messages in the burst")
    parser.add_argument("--timeout", type=float, default=120, help="longest wait for a burst's deliveries")
    parser.add_argument("--connect-timeout", type=float, default=600, help="longest wait for the sockets to open")
    parser.add_argument("--out", default=str(ROOT / "bench" / "workers-results.md"))
    args = parser.parse_args()
    sizes = args.sizes.split(",")

    def sockets(size: str, processes: int) -> int:
        return args.per_process * processes if size == "full" else int(size)

    largest = max(sockets(size, args.workers) for size in sizes)
    if -(-largest // args.loaders) + 100 > 20_000:
        parser.error(f"{largest} sockets need more than {args.loaders} loaders of 20,000 open files each")
    # The default cap, 7/8 of the open files limit, is 17,388 here; each
    # process may hold its share and a margin.
    overrides = {"WS4REDIS_MAX_CONNECTIONS": args.per_process + 200}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as work:
        env = prepare_project(Path(work), overrides)
        points = [
            (
                (processes, size),
                f"{f'--workers {processes}' if processes > 1 else '1 process'}, N = {sockets(size, processes)}",
            )
            for size in sizes
            for processes in (1, args.workers)
        ]
        rounds = measured_rounds(
            args.runs,
            points,
            lambda key: measure(env, key[0] if key[0] > 1 else None, sockets(key[1], key[0]), args, Path(work)),
            Path(work),
        )
    columns = {}
    for size in sizes:
        for processes in (1, args.workers):
            label = "1 process" if processes == 1 else f"--workers {processes}"
            columns[f"{label}, N = {sockets(size, processes):,}"] = [one[(processes, size)] for one in rounds]
    text = table(columns, args.runs) + "\n\n" + ratios(rounds, sizes, args.workers)
    print(text)
    raw = [{f"{processes}:{size}": found for (processes, size), found in one.items()} for one in rounds]
    Path(args.out).write_text(
        f"# twisted_ws4redis: --workers {args.workers} against one process\n\n"
        f"`python bench/workers.py --sizes {args.sizes} --workers {args.workers} --runs {args.runs} "
        f"--loaders {args.loaders}`, {time.strftime('%Y-%m-%d %H:%M')}, Python {sys.version.split()[0]}, "
        f"2 CPUs shared by the server, Redis and {args.loaders} load processes (nothing pinned), "
        f"WS4REDIS_MAX_CONNECTIONS = {args.per_process + 200} per process.\n\n"
        + text
        + "\n\n<details><summary>Every run (JSON)</summary>\n\n```json\n"
        + json.dumps(raw, indent=1)
        + "\n```\n</details>\n"
    )


if __name__ == "__main__":
    main()
