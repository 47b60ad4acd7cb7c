"""``make bench``: every scenario of wsload.py against a fresh twistd ws4redis
per run (server pinned to CPU 0, load generator to CPU 1), medians of several
runs, written as a Markdown table.

    python bench/run.py --sizes 1000,5000,19500 --runs 3 --out bench/results.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chatserver"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from twisted_ws4redis.server.embedded import EmbeddedRedis  # noqa: E402

#: The columns of the results table: (scenario, metric, heading).
COLUMNS = [
    ("connect", "handshakes_per_s", "handshakes/s"),
    ("connect", "server_cpu_us_per_handshake", "server µs/handshake"),
    ("connect", "client_busy_pct", "handshakes: client CPU %"),
    ("connect", "server_busy_pct", "handshakes: server CPU %"),
    ("connect", "kib_per_connection", "KiB/connection"),
    ("connect", "redis_clients", "Redis clients"),
    ("persisted", "kib_per_connection", "KiB/connection, a persisted message replayed"),
    ("fanout", "deliveries_per_s", "fan-out deliveries/s"),
    ("fanout", "lost", "lost"),
    ("fanout", "p50_ms", "burst p50 ms"),
    ("fanout", "p99_ms", "burst p99 ms"),
    ("fanout", "server_cpu_us_per_delivery", "server µs/delivery"),
    ("fanout", "client_busy_pct", "burst: client CPU %"),
    ("fanout", "server_busy_pct", "burst: server CPU %"),
    ("paced", "p99_ms", "single broadcast p99 ms"),
    ("paced", "client_busy_pct", "paced: client CPU %"),
    ("paced", "server_busy_pct", "paced: server CPU %"),
    ("chat", "deliveries_per_s", "chat deliveries/s"),
    ("churn", "connections_per_s", "churn conn/s"),
    ("churn", "rss_growth_pct", "RSS growth after churn %"),
    ("churn", "redis_clients_after", "Redis clients after churn"),
    ("session", "handshakes_per_s", "session handshakes/s"),
    ("session", "server_cpu_us_per_handshake", "session: server µs/handshake"),
    ("session", "client_busy_pct", "session: client CPU %"),
    ("log", "errors", "server log: error and critical lines"),
]

#: A client busier than this (% of the phase) was the bottleneck: the
#: scenario's figures are marked "≥", lower bounds of what the server can do.
CLIENT_BOUND_PCT = 90

#: Levels of the server's log lines that a run must not produce (a failure's
#: traceback is logged at critical, Django's errors at error).
ERROR_MARKS = ("#critical]", "#error]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Settings of the example the benchmark changes before any ``--set``: the load
#: generator's facilities (bench-*) are no page's, which the example's
#: least-privilege hook would refuse.
#: The example's settings, minus what a default project does not have: its
#: least-privilege hook, presence and token authentication (``--set`` turns
#: any of them back on, e.g. ``--set WS4REDIS_PRESENCE=true``).
BENCH_SETTINGS = {"WS4REDIS_ALLOWED_CHANNELS": None, "WS4REDIS_PRESENCE": False, "WS4REDIS_PROCESS_REQUEST": None}


def prepare_project(work: Path, overrides: dict) -> dict:
    """The example project, migrated, with its demo users; ``overrides``
    (``--set``) go into a settings module that extends the example's."""
    (work / "bench_settings.py").write_text(
        "from chatserver.settings import *  # noqa\n"
        + "".join(f"{name} = {value!r}\n" for name, value in {**BENCH_SETTINGS, **overrides}.items())
    )
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="bench_settings",
        CHATSERVER_DB=str(work / "db.sqlite3"),
        CHATSERVER_STATIC_ROOT=str(work / "static"),
        PYTHONPATH=os.pathsep.join(map(str, (work, EXAMPLE, ROOT))),
    )
    for command in (["migrate", "--noinput", "-v0"], ["loaddata", "-v0", "demo_users"]):
        subprocess.run([sys.executable, "manage.py", *command], env=env, cwd=EXAMPLE, check=True)
    env["BENCH_WORK"] = str(work)  # where serving() keeps the servers' logs
    return env


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


#: The supervisor's line for each worker that is ready (supervisor.py).
WORKER_READY = re.compile(r"Worker (\d+) \(pid (\d+)\) is ready")


@dataclasses.dataclass
class Server:
    port: int
    #: twistd's process: the server, or (``--workers``) the supervisor
    pid: int
    redis_port: int
    #: the processes that serve: [pid], or the workers by slot
    pids: list[int]
    log: Path


def wait_for_workers(log: Path, count: int, process: subprocess.Popen, timeout: float = 60) -> list[int]:
    """The pids of ``count`` workers, by slot, once the supervisor has logged each as ready."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited at start (see {log})")
        ready = dict(WORKER_READY.findall(log.read_text(errors="replace")))
        if len(ready) >= count:
            return [int(ready[slot]) for slot in sorted(ready, key=int)][:count]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ready)} of {count} workers ready after {timeout} s")
        time.sleep(0.1)


class Scraper(threading.Thread):
    """GET /metrics once a second, as Prometheus would, until stopped."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.count = self.failed = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                self.count += 1
            except OSError:
                self.failed += 1

    def stop(self) -> None:
        self._done.set()
        self.join(15)


@contextlib.contextmanager
def serving(
    env: dict,
    results: list[dict],
    workers: int | None = None,
    cpus: str | None = "0",
    redis_url: str | None = None,
    metrics: bool = False,
):
    """A fresh Redis and twistd ws4redis (on ``cpus`` with taskset; None:
    unpinned), with ``--workers`` if given: yields a Server once it (every
    worker) is ready. ``redis_url`` (e.g. ``redis+cluster://…``): that Redis,
    started by the caller, instead of a fresh one (Server.redis_port is then
    None). ``metrics``: with ``--metrics``, scraped once a second as
    Prometheus would (the scrapes' count goes into ``results``). Once it
    stopped, the count of error lines in its log goes into ``results``, and
    the log is removed (its error lines are printed on stderr first)."""
    redis_server = None
    if redis_url is None:
        redis_server = EmbeddedRedis(port=free_port())
        redis_server.start()
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    port = free_port()
    log_path = Path(env.get("BENCH_WORK") or tempfile.gettempdir()) / f"twistd-{port}.log"
    command = [
        str(BIN / "twistd"),
        "--nodaemon",
        "--pidfile=",
        "ws4redis",
        "--settings=bench_settings",
        f"--endpoint=tcp:{port}:interface=127.0.0.1:backlog=4096",
        f"--redis={redis_url}",
    ]
    if workers:
        command.append(f"--workers={workers}")
    scraper = None
    if metrics:
        metrics_port = free_port()
        command.append(f"--metrics=tcp:{metrics_port}:interface=127.0.0.1")
        scraper = Scraper(metrics_port)
    with open(log_path, "wb") as log:  # the server writes to its own copy
        server = subprocess.Popen(
            (["taskset", "-c", cpus] if cpus else []) + command, env=env, cwd=EXAMPLE, stdout=log, stderr=log
        )
    try:
        wait_for_port(port, server)
        pids = wait_for_workers(log_path, workers, server) if workers else [server.pid]
        if scraper is not None:
            scraper.start()
        yield Server(port, server.pid, redis_server.port if redis_server else None, pids, log_path)
    finally:
        if scraper is not None:
            scraper.stop()
            results.append({"scenario": "scrapes", "scrapes": scraper.count, "failed_scrapes": scraper.failed})
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if redis_server is not None:
            redis_server.stop()
    with open(log_path, errors="replace") as lines:
        text = lines.read().splitlines()
    log_path.unlink()
    bad = [line for line in text if any(mark in line for mark in ERROR_MARKS)]
    warnings = [line for line in text if "#warn]" in line]
    for line in bad[:20]:
        print(f"server log: {line}", file=sys.stderr)
    found = next((result for result in results if result["scenario"] == "log"), None)
    if found is None:
        found = {"scenario": "log", "errors": 0, "warnings": 0, "excerpt": []}
        results.append(found)
    found["errors"] += len(bad)
    found["warnings"] = found.get("warnings", 0) + len(warnings)
    found.setdefault("excerpt", []).extend((bad + warnings)[:10])


def one_run(env: dict, size: int, args) -> list[dict]:
    """Every scenario once, the JSON results. "persisted" gets a server of
    its own: memory freed by the sockets of an earlier scenario would be
    reused by its sockets and hide what they cost."""
    asked = args.scenarios.split(",")
    groups = [[name for name in asked if name != "persisted"], ["persisted"] if "persisted" in asked else []]
    results: list[dict] = []
    for group, paced in zip(groups, (True, False), strict=False):
        if not group:
            continue
        with serving(env, results, metrics=args.metrics) as server:
            port, pid, redis_port = server.port, server.pid, server.redis_port
            common = [
                "taskset",
                "-c",
                "1",
                sys.executable,
                str(ROOT / "bench" / "wsload.py"),
                f"--url=ws://127.0.0.1:{port}/ws/",
                f"--redis=redis://127.0.0.1:{redis_port}/0",
                "--prefix=demo",
                f"--server-pid={pid}",
                f"-n={size}",
                f"--login-url=http://127.0.0.1:{port}/accounts/login/",
                f"--churn-seconds={args.churn_seconds}",
                f"--protocol={args.protocol}",
            ]
            passes = [(",".join(group), [])]
            if paced:
                passes.append(("fanout", ["--messages=50", "--interval=0.02"]))
            for scenarios, extra in passes:
                done = subprocess.run(
                    [*common, f"--scenarios={scenarios}", *extra], capture_output=True, text=True, check=False
                )
                if done.returncode:
                    sys.exit(f"wsload.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
                for line in done.stdout.splitlines():
                    result = json.loads(line)
                    if extra:
                        result["scenario"] = "paced"
                    results.append(result)
    return results


def medians(runs: list[list[dict]]) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(scenario, metric) -> (median, min, max) over the runs."""
    values: dict[tuple[str, str], list[float]] = {}
    for results in runs:
        for result in results:
            for metric, value in result.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.setdefault((result["scenario"], metric), []).append(value)
    return {key: (statistics.median(found), min(found), max(found)) for key, found in values.items()}


def number(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def table(by_size: dict[int, dict], runs: int) -> str:
    sizes = sorted(by_size)
    lines = [
        f"| metric (median of {runs} runs, min–max) | " + " | ".join(f"N = {size:,}" for size in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for scenario, metric, heading in COLUMNS:
        cells = []
        for size in sizes:
            found = by_size[size].get((scenario, metric))
            if found is None:
                cells.append("–")
                continue
            median, low, high = found
            client = by_size[size].get((scenario, "client_busy_pct"))
            bound = "≥ " if client is not None and client[0] >= CLIENT_BOUND_PCT and metric.endswith("_per_s") else ""
            spread = f" ({number(low)}–{number(high)})" if low != high else ""
            cells.append(f"{bound}{number(median)}{spread}")
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,19500")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="connect,persisted,fanout,chat,churn,session")
    parser.add_argument("--churn-seconds", type=float, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument(
        "--protocol", choices=("ws4redis", "v2"), default="ws4redis", help="the wire the load generator's sockets speak"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="run the server with --metrics and scrape it once a second"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a Django setting for the server, e.g. WS4REDIS_AUTO_PING_INTERVAL=null (repeatable)",
    )
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    # The default websocket cap is 7/8 of the open files limit (17,388 of
    # 20,000 here): at N = 19,500 it refused the last 2,100 handshakes.
    overrides = {"WS4REDIS_MAX_CONNECTIONS": max(sizes) + 200}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    with tempfile.TemporaryDirectory() as work:
        env = prepare_project(Path(work), overrides)
        by_size = {}
        raw = {}
        for size in sizes:
            runs = []
            for number in range(args.runs):
                print(f"N = {size}: run {number + 1} of {args.runs}", file=sys.stderr, flush=True)
                runs.append(one_run(env, size, args))
            by_size[size] = medians(runs)
            raw[size] = runs
    text = table(by_size, args.runs)
    print(text)
    settings = "".join(f" --set {item}" for item in args.set) + (" --metrics" if args.metrics else "")
    Path(args.out).write_text(
        f"# twisted_ws4redis benchmark\n\n`python bench/run.py --sizes {args.sizes} --runs {args.runs}{settings}`, "
        f"{time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs "
        "(server on CPU 0, load generator on CPU 1).\n\n" + text + "\n\n<details><summary>Every run (JSON)"
        "</summary>\n\n```json\n" + json.dumps(raw, indent=1) + "\n```\n</details>\n"
    )


if __name__ == "__main__":
    main()
