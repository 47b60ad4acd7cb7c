"""``--workers N``: the supervisor. It binds every endpoint once and runs N
worker processes (``python -m twisted_ws4redis.server.worker``) that adopt
those sockets (sharedports.py). Each worker is a whole server, with its own
threads, Redis connections and open files limit; Redis carries a broadcast
and a socket's publish to every worker as it does to every node.

The supervisor serves no client and runs no Django code (Django is set up
in it only to check the settings, once, before any worker starts). It
restarts a worker that dies, with a back-off; SIGTERM (or SIGINT) stops
every worker gracefully, and SIGHUP replaces them one at a time, each new
worker ready before the old one stops, so that new code or settings are
taken up without refusing a connection. A worker's log lines carry its
number in the system field; it writes them to the supervisor's standard
output itself when the supervisor logs there, or else sends them as JSON
events that the supervisor passes to its own log observers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from types import FrameType

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from .. import logsafe
from .embedded import EmbeddedRedis, EmbeddedRedisService
from .gathered import WorkerSockets, supervisor_site
from .loadshare import SharedLoad
from .logbridge import FORWARDED
from .protocol import wait_until
from .service import ServerConfig, listening
from .sharedports import bind

log = Logger()

#: Seconds before the first restart of a worker that died, doubled at each
#: death that follows within ``STEADY_AFTER`` seconds of a start, up to the most.
RESTART_FIRST_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
STEADY_AFTER = 10.0
#: Seconds a worker has to become ready (listening, its first Redis attempt over).
READY_TIMEOUT = 60.0
#: Seconds a stopping worker gets beyond ``--grace`` before it is killed.
STOP_MARGIN = 15.0
#: A worker's descriptors: the pipe it says it is ready on, the load file
#: (loadshare.py), then the listening socket of each endpoint.
READY_FD = 3
LOAD_FD = 4
FIRST_LISTEN_FD = 5
#: Bytes of one line of a worker's JSON log held at most; a longer line is dropped (and said so).
MAX_LINE = 1 << 20


def worker_count(value: str | int | None) -> int | None:
    """``--workers``: a number from 1, or ``auto`` (the CPUs this process may
    run on); None (not given): no workers, this process serves."""
    if value is None:
        return None
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--workers must be a number from 1, or 'auto', got {value!r}")
    return count


def worker_arguments(config: ServerConfig) -> list[str]:
    """The command line that gives a worker ``config`` (tap.server_config's inverse)."""
    arguments = [f"--endpoint={description}" for description in config.endpoints]
    arguments += [f"--threads={config.threads}", f"--grace={config.grace}"]
    if config.wsgi:
        arguments.append(f"--wsgi={config.wsgi}")
    if not config.serve_wsgi:
        arguments.append("--no-wsgi")
    if config.static:
        arguments.append("--static")
    if config.redis:
        arguments.append(f"--redis={config.redis}")
    if config.metrics:
        arguments.append(f"--metrics={config.metrics}")
    return arguments


class _Lines:
    """Complete lines out of a pipe's reads; a line longer than MAX_LINE is
    dropped (``dropped`` counts them) rather than held."""

    def __init__(self):
        self._buffer = bytearray()
        self._dropping = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytearray]:
        if self._dropping:
            end = data.find(b"\n")
            if end < 0:
                return []
            data, self._dropping = data[end + 1 :], False
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > MAX_LINE:
            self.dropped += 1
            self._dropping = True
            rest = bytearray()
        self._buffer[:] = rest
        return lines

    def rest(self) -> bytes:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest


class WorkerProcess(ProcessProtocol):
    """One worker: its readiness and its end reported; its log relayed to the
    supervisor's observers (``relay``), or written by the worker itself to
    the supervisor's standard output."""

    def __init__(
        self, slot: int, started: float, on_ready: Callable[[WorkerProcess], None], observer=globalLogPublisher
    ):
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self.ready = False
        #: where it serves its metrics to the supervisor (gathered.py); None without --metrics
        self.metrics_socket: str | None = None
        #: fires with whether it became ready (Supervisor._watch_readiness)
        self.readiness: defer.Deferred | None = None
        self.exit: str | None = None  # how it ended, once it has
        self.ended: defer.Deferred[WorkerProcess] = defer.Deferred()
        self._on_ready = on_ready
        self._observer = observer
        self._out = _Lines()
        self._err = _Lines()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]  # set before connectionMade

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD:
            if not self.ready:
                self.ready = True
                self._on_ready(self)
        else:
            super().childDataReceived(childFD, data)

    def outReceived(self, data: bytes) -> None:
        dropped = self._out.dropped
        for line in self._out.feed(data):
            self._relay(line)
        if self._out.dropped > dropped:
            log.warn("worker {slot}: a log line of more than {most} bytes was dropped", slot=self.slot, most=MAX_LINE)

    def errReceived(self, data: bytes) -> None:
        for line in self._err.feed(data):
            self._text(line)

    def _text(self, line: bytes | bytearray) -> None:
        if line.strip():
            log.warn("worker {slot}: {line}", slot=self.slot, line=logsafe.text(line.decode("utf-8", "replace")))

    def _relay(self, line: bytes | bytearray) -> None:
        """One JSON event of the worker, to the supervisor's observers."""
        before, _, record = line.rpartition(b"\x1e")
        self._text(before)  # something else wrote to its stdout
        try:
            event = eventFromJSON(record.strip().decode("utf-8"))
            level = event["log_level"].name
        except (ValueError, KeyError, AttributeError, TypeError):
            self._text(record)
            return
        event["log_system"] = worker_system(self.slot, event, level)
        # The worker passed it to Django's LOGGING already (logbridge).
        event[FORWARDED] = True
        self._observer(event)

    def processEnded(self, reason) -> None:
        status = reason.value
        self._relay(self._out.rest())
        self._text(self._err.rest())
        if getattr(status, "signal", None):
            self.exit = f"was killed by signal {status.signal}"
        else:
            self.exit = f"exited with status {getattr(status, 'exitCode', None) or 0}"
        self.ended.callback(self)

    def signal(self, name: str) -> None:
        with contextlib.suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)  # type: ignore[union-attr]  # a lost one raises ProcessExitedAlready


def _outcome(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred with ``d``'s result, ``d`` keeping it for its other readers."""
    copy: defer.Deferred = defer.Deferred()

    def both(result):
        copy.callback(result)
        return result

    d.addCallback(both)
    return copy


def worker_system(slot: int, event: dict, level: str | None = None) -> str:
    """The system field of a worker's event in the supervisor's log: ``worker N namespace#level``."""
    if level is None:
        level = getattr(event.get("log_level"), "name", "-")
    return f"worker {slot} {event.get('log_system') or event.get('log_namespace', '-') + '#' + level}"


class Supervisor(MultiService):
    """Binds the endpoints, runs ``config.workers`` workers on them and keeps them running."""

    #: As Ws4RedisService's: in the foreground a port that cannot be bound ends the process with one line.
    exit_on_listen_error = False

    def __init__(
        self,
        config: ServerConfig,
        reactor,
        embedded: EmbeddedRedis | None = None,
        executable: str = sys.executable,
        share_output: bool = False,
    ):
        """``share_output``: this process logs to its standard output, which
        the workers then write their lines to themselves (text, as this
        process does); otherwise they send JSON events that it relays (its
        log may be a file it rotates, or syslog). Relaying costs about 80 µs
        of this process per line (measured: 13 % of a core at 1,670 requests/s)."""
        super().__init__()
        self.config = config
        if not config.workers:
            raise ValueError("a Supervisor needs config.workers")
        self.count = count = config.workers
        self.reactor = reactor
        self.executable = executable
        self.embedded = embedded
        self.share_output = share_output
        if embedded is not None:
            EmbeddedRedisService(embedded, reactor).setServiceParent(self)
        self.ports: list[IListeningPort] = []
        # Each worker's websockets and cap, for the others to see (loadshare.py).
        self._load_file = tempfile.TemporaryFile()  # noqa: SIM115 (open for the supervisor's life: mmap'ed)
        self._load_file.truncate(SharedLoad.size(count))
        self.load = SharedLoad(self._load_file.fileno(), count)
        #: slot -> the worker serving it
        self.workers: dict[int, WorkerProcess] = {}
        #: every worker process not ended yet (a roll's new and old ones too)
        self.processes: set[WorkerProcess] = set()
        self._quick_deaths = [0] * count
        self._restarts: dict[int, IDelayedCall] = {}
        self._rolling = False
        self._roll_again = False
        self._stopping = False
        self._ever_ready = False
        self._previous_sighup: Callable[[int, FrameType | None], object] | int | None = None
        #: --metrics: the workers' sockets (made at start), and the endpoint this process serves (gathered.py)
        self.metrics_sockets: WorkerSockets | None = None
        if config.metrics:
            try:
                endpoint = serverFromString(reactor, config.metrics)
            except Exception as exc:  # noqa: BLE001 (a bad string, or files it names that cannot be used)
                raise ValueError(f"--metrics {config.metrics!r} is not a valid endpoint: {exc}") from None
            metrics = StreamServerEndpointService(endpoint, supervisor_site(self))
            metrics._raiseSynchronously = True
            metrics.setServiceParent(self)

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound here, before privileges are dropped (--uid): the workers start
        # afterwards, as the user the supervisor runs as then.
        for description in self.config.endpoints:
            with listening(description, self.exit_on_listen_error):
                self.ports.append(bind(serverFromString(self.reactor, description)))
            log.info("Listening on {endpoint} for {count} worker(s)", endpoint=description, count=self.count)
        with listening(f"{self.config.metrics} (--metrics)", self.exit_on_listen_error):
            super().privilegedStartService()
        if self.config.metrics:
            log.info("Serving the workers' metrics on {endpoint} (/metrics, /health)", endpoint=self.config.metrics)

    def startService(self) -> None:
        super().startService()  # an embedded Redis first: the workers connect to it
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        if self.config.metrics:
            self.metrics_sockets = WorkerSockets()
        for slot in range(self.count):
            self._start(slot)

    def _sighup(self, signum, frame) -> None:
        self.reactor.callFromThread(self.roll)

    def _arguments(self, slot: int, metrics_socket: str | None = None) -> list[str]:
        # A worker serves its metrics to this process only, on its own socket.
        config = ServerConfig(
            **{
                **vars(self.config),
                "metrics": f"unix:{quoteStringArgument(metrics_socket)}" if metrics_socket else None,
            }
        )
        if self.embedded is not None:
            config = ServerConfig(**{**vars(config), "redis": f"unix://{self.embedded.socket_path}"})
        descriptors = ",".join(str(FIRST_LISTEN_FD + index) for index in range(len(self.ports)))
        return [
            self.executable,
            "-m",
            "twisted_ws4redis.server.worker",
            f"--slot={slot}",
            f"--slots={self.count}",
            f"--listen-fds={descriptors}",
            f"--load-fd={LOAD_FD}",
            f"--ready-fd={READY_FD}",
            f"--log={'text' if self.share_output else 'json'}",
            *worker_arguments(config),
        ]

    def _spawn(self, slot: int) -> WorkerProcess:
        worker = WorkerProcess(slot, self.reactor.seconds(), self._became_ready)
        if self.metrics_sockets is not None:
            worker.metrics_socket = self.metrics_sockets.next_path(slot)
        child_fds: dict[int, str | int] = {0: "w", 1: 1, 2: 2} if self.share_output else {0: "w", 1: "r", 2: "r"}
        child_fds.update({READY_FD: "r", LOAD_FD: self._load_file.fileno()})
        child_fds.update(
            {FIRST_LISTEN_FD + index: port.fileno() for index, port in enumerate(self.ports)}  # type: ignore[attr-defined]  # tcp/unix Ports
        )
        env = dict(os.environ)
        # What this process imports from (manage.py's directory, --pythonpath), the workers too.
        env["PYTHONPATH"] = os.pathsep.join([path for path in sys.path if path] + [env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        self.reactor.spawnProcess(
            worker,
            self.executable,
            self._arguments(slot, worker.metrics_socket),
            env=env,
            path=os.getcwd(),
            childFDs=child_fds,
        )
        self.processes.add(worker)
        worker.ended.addCallback(self._ended)
        log.info("Worker {slot} started (pid {pid})", slot=slot, pid=worker.pid)
        worker.readiness = self._watch_readiness(worker)
        return worker

    def _start(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if self._stopping:
            return
        try:
            self.workers[slot] = self._spawn(slot)
        except OSError as exc:  # fork's EAGAIN/ENOMEM, an executable replaced by a deploy
            self._restart_later(slot, f"cannot be started ({exc})", quick=True)

    def _restart_later(self, slot: int, what: str, quick: bool) -> None:
        """Start ``slot``'s worker again after the back-off, which doubles
        while its workers die ``quick``ly."""
        deaths = self._quick_deaths[slot] = self._quick_deaths[slot] + 1 if quick else 0
        delay = min(RESTART_FIRST_DELAY * 2 ** max(deaths - 1, 0), RESTART_MAX_DELAY)
        log.warn("Worker {slot} {what}; starting it again in {delay} s", slot=slot, what=what, delay=delay)
        self._restarts[slot] = self.reactor.callLater(delay, self._start, slot)

    def _became_ready(self, worker: WorkerProcess) -> None:
        self._ever_ready = True
        log.info("Worker {slot} (pid {pid}) is ready", slot=worker.slot, pid=worker.pid)

    def _watch_readiness(self, worker: WorkerProcess) -> defer.Deferred:
        """Fires with whether ``worker`` became ready before it ended or
        READY_TIMEOUT passed. A slot's worker that is not ready by then is
        stopped (and so started again); a roll stops its own."""

        def settled(_) -> bool:
            if not worker.ready and worker.exit is None and not self._stopping:
                log.error(
                    "Worker {slot} (pid {pid}) is not ready after {timeout} s",
                    slot=worker.slot,
                    pid=worker.pid,
                    timeout=READY_TIMEOUT,
                )
                if self.workers.get(worker.slot) is worker:
                    self._stop_worker(worker)
            return worker.ready

        return wait_until(self.reactor, lambda: worker.ready or worker.exit is not None, READY_TIMEOUT).addCallback(
            settled
        )

    @defer.inlineCallbacks
    def _stop_worker(self, worker: WorkerProcess):
        """SIGTERM, and SIGKILL if it has not ended after ``--grace`` and a margin.
        Fires with whether it stopped by itself."""
        worker.signal("TERM")
        stopped = yield wait_until(self.reactor, lambda: worker.exit is not None, self.config.grace + STOP_MARGIN)
        if not stopped:
            log.error("Worker {slot} (pid {pid}) did not stop in time: killed", slot=worker.slot, pid=worker.pid)
            worker.signal("KILL")
            yield wait_until(self.reactor, lambda: worker.exit is not None, 5.0)
        return bool(stopped)

    # -- a worker ended ----------------------------------------------------------

    def _ended(self, worker: WorkerProcess) -> None:
        self.processes.discard(worker)
        if self.metrics_sockets is not None and worker.metrics_socket:
            self.metrics_sockets.discard(worker.metrics_socket)  # a dead worker's (each spawn has its own)
        if self.workers.get(worker.slot) is not worker:
            return  # replaced in a roll, or never taken on
        del self.workers[worker.slot]
        if worker.pid is not None:  # (None: it never started)
            self.load.clear(worker.slot, worker.pid)  # no room there until its successor says so
        if self._stopping:
            return
        if not self._ever_ready:
            log.critical(
                "Worker {slot} {exit} before any worker was ready: stopping (see its lines above)",
                slot=worker.slot,
                exit=worker.exit,
            )
            self._exit_failing()
            self.reactor.stop()
            return
        self._restart_later(
            worker.slot,
            f"(pid {worker.pid}) {worker.exit}",
            quick=self.reactor.seconds() - worker.started < STEADY_AFTER,
        )

    def _exit_failing(self) -> None:
        """End the process with status 1 once the reactor has stopped."""

        def exit_failing() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            # twistd exits 0 after its reactor stops, and has no way to say otherwise.
            os._exit(1)

        self.reactor.addSystemEventTrigger("after", "shutdown", exit_failing)

    # -- SIGHUP: one at a time -----------------------------------------------------

    @defer.inlineCallbacks
    def roll(self):
        """Replace every worker, one at a time: a new worker takes the slot
        once it is ready, then the old one stops gracefully. A SIGHUP during
        a roll makes another one follow (the code may have changed again)."""
        if self._stopping:
            return
        if self._rolling:
            log.info("SIGHUP during a restart: another one follows it")
            self._roll_again = True
            return
        self._rolling = True
        log.info("SIGHUP: restarting the {count} worker(s) one at a time", count=self.count)
        try:
            for slot in range(self.count):
                if self._stopping:
                    return
                new = self._spawn(slot)
                ready = yield _outcome(new.readiness)  # type: ignore[arg-type]  # set by _spawn
                if not ready or self._stopping:
                    new.signal("TERM")
                    if not self._stopping:
                        log.error(
                            "The new worker {slot} {exit}: the restart stops here, the workers not replaced yet go on",
                            slot=slot,
                            exit=new.exit or "was not ready in time",
                        )
                    return
                pending = self._restarts.pop(slot, None)
                if pending is not None:
                    pending.cancel()
                old = self.workers.get(slot)
                self.workers[slot] = new
                if old is not None:
                    yield self._stop_worker(old)
            log.info("SIGHUP: every worker restarted")
        finally:
            self._rolling = False
            if self._roll_again and not self._stopping:
                self._roll_again = False
                self.reactor.callLater(0, self.roll)

    # -- stop ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        self._stopping = True
        for pending in self._restarts.values():
            pending.cancel()
        self._restarts.clear()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
        running = list(self.processes)
        log.info("Stopping {count} worker(s)", count=len(running))
        try:
            stopped = yield defer.gatherResults([self._stop_worker(worker) for worker in running])
            for port in self.ports:
                yield defer.maybeDeferred(port.stopListening)
            yield MultiService.stopService(self)
        finally:
            if self.metrics_sockets is not None:
                self.metrics_sockets.remove()
        if not all(stopped):
            self._exit_failing()  # not a graceful stop: say so to systemd
        # A completed graceful stop is a success (as Ws4RedisService says).
        elif getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
