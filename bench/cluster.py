"""``make bench-cluster``: one Redis against a 3-master Redis Cluster (sharded
pub/sub, no replicas) under a paced publish rate, end to end: publisher ->
Redis -> one ``twistd ws4redis`` -> websocket clients.

    python bench/cluster.py --rates 20000,50000,100000,200000 --runs 3 --out bench/cluster-results.md

Each measurement has a fresh Redis (one redis-server, or three started with
``--cluster-enabled yes`` and joined by ``redis-cli --cluster create``, as
tests/test_cluster.py does, without replicas), a fresh server on it
(``--redis=redis://…`` or ``redis+cluster://…``), one wsload.py (scenario
``facilities``: ``--sockets`` over ``--facilities`` facilities, so that the
channels fall on every shard) and bench/publisher.py, which writes
``--rate`` PUBLISH (one Redis) or SPUBLISH (each channel's master, from
redis.crc.key_slot and CLUSTER SLOTS) per second for ``--seconds``, pipelined.
The two set-ups alternate within each round. Every process' CPU is read from
``/proc/PID/stat`` over the measured span (first publish to last delivery or
reply), the publisher's from itself. Nothing is pinned: 2 cores are shared by
everything, which bounds what a cluster can add here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.crc import key_slot

import workers
from run import ROOT, free_port, number, prepare_project, serving
from twisted_ws4redis.server.embedded import EmbeddedRedis, redis_server_binary
from workers import cell
from wsload import cpu_seconds

sys.path.insert(0, str(ROOT / "tests"))
from test_cluster import cluster_port  # the tests' way of choosing a node's ports

PREFIX = "demo:broadcast:"


def channel(index: int) -> str:
    return f"{PREFIX}bench-f{index}"


def wait_answers(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited at start")
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def one_redis():
    """(url, {port: pid}, publish command) of a fresh redis-server."""
    server = EmbeddedRedis(port=free_port())
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0", {server.port: server.process.pid}, "PUBLISH"
    finally:
        server.stop()


@contextlib.contextmanager
def three_masters(work: Path):
    """(url, {port: pid}, publish command) of a fresh 3-master cluster (no replicas)."""
    nodes: dict[int, subprocess.Popen] = {}
    directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=work))
    try:
        for number_ in range(3):
            port = cluster_port()
            here = directory / f"node{number_}"
            here.mkdir()
            with open(here / "redis.log", "ab") as log:
                nodes[port] = subprocess.Popen(
                    [
                        redis_server_binary(),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(here),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(here / "nodes.conf"),
                        "--cluster-node-timeout",
                        "1500",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_answers(port, nodes[port])
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(
            b"cluster_state:ok" in redis.Redis(port=port).execute_command("CLUSTER", "INFO") for port in nodes
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster is not ok")
            time.sleep(0.1)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in nodes)
        yield url, {port: process.pid for port, process in nodes.items()}, "SPUBLISH"
    finally:
        for process in nodes.values():
            if process.poll() is None:
                process.terminate()
        for process in nodes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_queue_seconds(pid: int) -> float:
    """Time a process' main thread has waited, runnable, for a CPU (``/proc/PID/schedstat``'s second field)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


def owners(ports: list[int], channels: list[str]) -> dict[int, list[str]]:
    """Each node's channels: all on one node, or by slot on a cluster's masters."""
    if len(ports) == 1:
        return {ports[0]: channels}
    table = redis.Redis(port=ports[0]).execute_command("CLUSTER", "SLOTS")
    found: dict[int, list[str]] = {port: [] for port in ports}
    for name in channels:
        slot = key_slot(name.encode())
        for start, end, master, *_ in table:
            if start <= slot <= end:
                found[int(master[1])].append(name)
                break
    return found


def wait_subscribed(plan: dict[int, list[str]], sharded: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for port, names in plan.items():
        db = redis.Redis(port=port)
        while True:
            if sharded:
                reply = db.execute_command("PUBSUB", "SHARDNUMSUB", *names)
                counts = dict(zip(reply[::2], reply[1::2], strict=False))
            else:
                counts = dict(db.pubsub_numsub(*names))
            if all(counts.get(name.encode(), 0) >= 1 for name in names):
                break
            if time.monotonic() > deadline:
                missing = sum(counts.get(name.encode(), 0) < 1 for name in names)
                raise TimeoutError(f"{missing} channels of node {port} have no subscriber")
            time.sleep(0.05)
        db.close()


class Loader(workers.Loader):
    """wsload.py, scenario ``facilities``, driven over stdin."""

    def __init__(self, port: int, redis_url: str, args, stderr):
        self.spawn(
            [
                f"--url=ws://127.0.0.1:{port}/ws/",
                f"--redis={redis_url}",
                "--prefix=demo",
                "--scenarios=facilities",
                f"-n={args.sockets}",
                f"--facilities={args.facilities}",
                f"--quiet={args.quiet}",
            ],
            stderr,
        )


def measure(env: dict, mode: str, rate: float, args, work: Path) -> dict:
    """One fresh Redis (``single`` or ``cluster``), server and loader; ``rate`` for ``args.seconds``."""
    results: list[dict] = []
    starting = one_redis() if mode == "single" else three_masters(work)
    with (
        starting as (url, redis_pids, command),
        serving(env, results, workers=args.workers, cpus=None, redis_url=url) as server,
        open(work / "wsload.err", "a") as stderr,
    ):
        ports = list(redis_pids)
        names = [channel(index) for index in range(args.facilities)]
        plan = owners(ports, names)
        loader = Loader(server.port, f"redis://127.0.0.1:{ports[0]}/0", args, stderr)
        try:
            held = loader.expect("held", 300)
            wait_subscribed(plan, sharded=mode == "cluster")
            time.sleep(1)
            pids = {
                **{f"redis {port}": pid for port, pid in redis_pids.items()},
                **{f"server {index}": pid for index, pid in enumerate(server.pids)},
                "loader": loader.process.pid,
            }
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            busy_before = machine_busy_seconds()
            waited_before = {name: run_queue_seconds(pid) for name, pid in pids.items()}
            info_before = {port: redis.Redis(port=port).info("stats") for port in ports}
            loader.tell("start")
            published = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "bench" / "publisher.py"),
                    f"--command={command}",
                    f"--rate={rate}",
                    f"--seconds={args.seconds}",
                    "--plan=" + json.dumps([[port, plan[port]] for port in ports]),
                ],
                capture_output=True,
                text=True,
                timeout=args.seconds + 120,
                check=False,
            )
            if published.returncode:
                raise RuntimeError(f"publisher.py failed: {published.stderr[-2000:]}")
            pub = json.loads(published.stdout.splitlines()[-1])
            # The publishing window (first publish to last reply): what Redis did while offered the rate.
            published_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
            busy_published = machine_busy_seconds()
            waited = {
                name: round(100 * (run_queue_seconds(pid) - waited_before[name]) / pub["span_s"], 1)
                for name, pid in pids.items()
            }
            heard = pub["replies"] - pub["unheard"] - pub["errors"]
            loader.tell(f"expect {heard * args.sockets // args.facilities} {args.drain}")
            window = loader.expect("window", args.drain + 60)
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            busy_after = machine_busy_seconds()
            info_after = {port: redis.Redis(port=port).info() for port in ports}
            loader.tell("close")
            loader.process.wait(60)
        finally:
            loader.stop()
    end_ns = max(pub["last_reply_ns"], window["last_ns"] or 0)
    span = max(1, end_ns - pub["started_ns"]) / 1e9
    per_socket = args.sockets / args.facilities
    expected = pub["replies"] * per_socket
    log = results[0]
    cpu = {name: round(100 * (after[name] - before[name]) / span, 1) for name in pids}
    redis_cpu = [cpu[f"redis {port}"] for port in ports]
    during = {name: round(100 * (published_cpu[name] - before[name]) / pub["span_s"], 1) for name in pids}
    redis_during = [during[f"redis {port}"] for port in ports]
    # What else ran meanwhile (other sessions, the kernel's work not charged to a process, the bench itself):
    # the machine's busy time less this measurement's processes (the publisher's from its own count).
    ours_during = sum(published_cpu[name] - before[name] for name in pids) + pub["cpu_s"]
    other_during = round(100 * ((busy_published - busy_before) - ours_during) / pub["span_s"], 1)
    ours = sum(after[name] - before[name] for name in pids) + pub["cpu_s"]
    other = round(100 * ((busy_after - busy_before) - ours) / span, 1)
    return {
        "mode": mode,
        "rate": rate,
        "held": held["held"],
        "failures": held["failures"],
        "offered_per_s": round(pub["generated"] / args.seconds),
        "sent_per_s": round(pub["sent"] / args.seconds),
        "accepted_per_s": round(pub["replies"] / pub["span_s"]),
        "accept_late_s": pub["late_s"],
        "not_sent": pub["not_sent"],
        "unheard": pub["unheard"],
        "errors": pub["errors"],
        "deliveries": window["deliveries"],
        "expected": round(expected),
        "deliveries_per_s": round(window["deliveries"] / span),
        "lost": round(expected - window["deliveries"]),
        "lost_pct": round(100 * (expected - window["deliveries"]) / max(1, expected), 2),
        "p50_ms": window["p50_ms"],
        "p99_ms": window["p99_ms"],
        "max_ms": window["max_ms"],
        "span_s": round(span, 2),
        "publish_span_s": pub["span_s"],
        "redis_pub_cpu_pct": redis_during,
        "redis_pub_cpu_max_pct": max(redis_during),
        "redis_pub_cpu_sum_pct": round(sum(redis_during), 1),
        "server_pub_cpu_pct": round(sum(value for name, value in during.items() if name.startswith("server")), 1),
        "loader_pub_cpu_pct": during["loader"],
        "publisher_pub_cpu_pct": round(100 * pub["cpu_s"] / pub["span_s"], 1),
        "redis_pub_wait_pct": [waited[f"redis {port}"] for port in ports],
        "server_pub_wait_pct": waited["server 0"],
        "machine_pub_busy_pct": round(100 * (busy_published - busy_before) / pub["span_s"], 1),
        "other_pub_cpu_pct": other_during,
        "other_cpu_pct": other,
        "redis_cpu_pct": redis_cpu,
        "redis_cpu_max_pct": max(redis_cpu),
        "redis_cpu_sum_pct": round(sum(redis_cpu), 1),
        "server_cpu_pct": round(sum(value for name, value in cpu.items() if name.startswith("server")), 1),
        "loader_cpu_pct": cpu["loader"],
        "publisher_cpu_pct": round(100 * pub["cpu_s"] / span, 1),
        "per_node": pub["per_node"],
        # The publisher's, the bench's own and any reconnection of the server's subscriber.
        "redis_new_connections": [
            info_after[port]["total_connections_received"] - info_before[port]["total_connections_received"]
            for port in ports
        ],
        "redis_used_memory_peak_mib": [round(info_after[port]["used_memory_peak"] / 2**20, 1) for port in ports],
        "still_open": window["still_open"],
        "errors_in_log": log["errors"],
        "warnings_in_log": log["warnings"],
        "excerpt": log["excerpt"][:5],
    }


#: (key, heading) of the table's rows.
ROWS = [
    ("offered_per_s", "offered msgs/s"),
    ("accepted_per_s", "accepted by Redis, msgs/s (replies over first publish to last reply)"),
    ("accept_late_s", "last reply after the offered window, s"),
    ("not_sent", "not sent (publisher's backlog full)"),
    ("unheard", "published with no subscriber (reply :0)"),
    ("deliveries_per_s", "deliveries/s to the clients"),
    ("lost", "lost (accepted × sockets per channel − delivered)"),
    ("lost_pct", "lost %"),
    ("p50_ms", "latency p50 ms"),
    ("p99_ms", "latency p99 ms"),
    ("publish_span_s", "publishing window s (first publish to last reply)"),
    ("redis_pub_cpu_pct", "publishing window: CPU % of each redis-server, each run"),
    ("redis_pub_cpu_sum_pct", "publishing window: CPU % of redis-server(s), summed"),
    ("server_pub_cpu_pct", "publishing window: CPU % of the ws server"),
    ("publisher_pub_cpu_pct", "publishing window: CPU % of the publisher"),
    ("loader_pub_cpu_pct", "publishing window: CPU % of the client (wsload.py)"),
    ("redis_pub_wait_pct", "publishing window: % of it each redis-server waited for a CPU (schedstat), each run"),
    ("server_pub_wait_pct", "publishing window: % of it the ws server waited for a CPU"),
    ("machine_pub_busy_pct", "publishing window: the machine's busy CPU % (of 200)"),
    ("other_pub_cpu_pct", "publishing window: CPU % of everything else (other sessions, kernel)"),
    ("span_s", "whole span s (first publish to last delivery or reply)"),
    ("redis_cpu_pct", "whole span: CPU % of each redis-server, each run"),
    ("server_cpu_pct", "whole span: CPU % of the ws server"),
    ("loader_cpu_pct", "whole span: CPU % of the client (wsload.py)"),
    ("other_cpu_pct", "whole span: CPU % of everything else"),
    ("errors_in_log", "server log: error and critical lines"),
    ("warnings_in_log", "server log: warnings"),
]


def table(columns: dict[str, list[dict]], runs: int) -> str:
    names = list(columns)
    lines = [f"| median of {runs} runs (min–max) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, heading in ROWS:
        if key in ("redis_cpu_pct", "redis_pub_cpu_pct", "redis_pub_wait_pct"):
            # One cell per run: each node's CPU (a run's masters, ordered by CPU).
            cells = [
                "; ".join(
                    " / ".join(number(value) for value in sorted(run[key], reverse=True)) for run in columns[name]
                )
                for name in names
            ]
        else:
            cells = [cell(columns[name], key) for name in names]
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rounds: list[dict], rates: list[float]) -> str:
    lines = [
        "| cluster ÷ one Redis, same round (median, min–max) | "
        + " | ".join(f"{rate:,.0f}/s" for rate in rates)
        + " |",
        "|---|" + "---:|" * len(rates),
    ]
    for key, heading in (
        ("accepted_per_s", "accepted msgs/s"),
        ("deliveries_per_s", "deliveries/s"),
        ("redis_pub_cpu_max_pct", "busiest redis-server's CPU, publishing window"),
        ("server_cpu_pct", "ws server's CPU"),
    ):
        cells = []
        for rate in rates:
            found = [
                round(one[("cluster", rate)][key] / one[("single", rate)][key], 2)
                for one in rounds
                if one[("single", rate)][key]
            ]
            cells.append(cell([{"x": value} for value in found], "x"))
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rates", default="5000,20000,50000,200000,500000,1000000", help="offered msgs/s, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3, help="how long each rate is offered")
    parser.add_argument("--facilities", type=int, default=300)
    parser.add_argument("--sockets", type=int, default=300, help="websockets, spread evenly over the facilities")
    parser.add_argument("--workers", type=int, default=None, help="twistd ws4redis --workers (default: one process)")
    parser.add_argument("--quiet", type=float, default=2.0, help="seconds without a delivery that end a count")
    parser.add_argument("--drain", type=float, default=20, help="longest wait for deliveries after publishing")
    parser.add_argument("--modes", default="single,cluster")
    parser.add_argument("--out", default=str(ROOT / "bench" / "cluster-results.md"))
    args = parser.parse_args()
    # SIGTERM (and SIGINT, which a shell's background job ignores) stop every server and remove the temp dir.
    for number_ in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number_, lambda *_: sys.exit("bench/cluster.py: stopped by a signal"))
    rates = [float(rate) for rate in args.rates.split(",")]
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as work:
        env = prepare_project(Path(work), {"WS4REDIS_MAX_CONNECTIONS": args.sockets + 200})
        points = [((mode, rate), f"{mode}, {rate:,.0f} msgs/s") for rate in rates for mode in modes]
        rounds = workers.measured_rounds(
            args.runs, points, lambda key: measure(env, *key, args, Path(work)), Path(work)
        )
    columns = {}
    for rate in rates:
        for mode in modes:
            label = "one Redis" if mode == "single" else "3-master cluster"
            columns[f"{label}, {rate:,.0f}/s"] = [one[(mode, rate)] for one in rounds]
    text = table(columns, args.runs)
    if modes == ["single", "cluster"]:
        text += "\n\n" + ratios(rounds, rates)
    print(text)
    raw = [{f"{mode}:{rate:.0f}": found for (mode, rate), found in one.items()} for one in rounds]
    Path(args.out).write_text(
        f"# twisted_ws4redis: one Redis against a 3-master Redis Cluster\n\n"
        f"`python bench/cluster.py --rates {args.rates} --runs {args.runs} --seconds {args.seconds:g} "
        f"--facilities {args.facilities} --sockets {args.sockets} --drain {args.drain:g}"
        + (f" --workers {args.workers}" if args.workers else "")
        + f"`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"Python {sys.version.split()[0]}, redis-server {_redis_version()} (default client-output-buffer-limit), "
        "2 CPUs "
        "shared by Redis, the server, the publisher and the client (nothing pinned); the cluster has 3 masters "
        "and no replicas; "
        + (f"--workers {args.workers}" if args.workers else "one server process")
        + ".\n\n"
        + text
        + "\n\n<details><summary>Every run (JSON)</summary>\n\n```json\n"
        + json.dumps(raw, indent=1)
        + "\n```\n</details>\n"
    )


def _redis_version() -> str:
    found = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    return found.split("v=")[1].split()[0] if "v=" in found else found.strip()


if __name__ == "__main__":
    main()
