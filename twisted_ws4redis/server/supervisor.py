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
taken up without refusing a connection. A worker logs to a pipe, as JSON
events (worker.py), which the supervisor passes to its own log observers
with the worker's number in the system field.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from .. import logsafe
from .embedded import EmbeddedRedis, EmbeddedRedisService
from .loadshare import SharedLoad
from .logbridge import FORWARDED
from .protocol import wait_until
from .service import ServerConfig
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
#: The key of the event a worker logs once it is ready.
READY = "log_ws4redis_worker_ready"
#: Bytes of one line of a worker's output held at most (a longer one is passed on in pieces).
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
    return arguments


def _lines(buffer: bytearray, data: bytes) -> list[bytes]:
    """The complete lines ``data`` ends in ``buffer``, which keeps the rest
    (at most MAX_LINE bytes: a longer line is cut)."""
    buffer += data
    *lines, rest = buffer.split(b"\n")
    if len(rest) > MAX_LINE:
        lines.append(rest)
        rest = b""
    buffer[:] = rest
    return lines


def _outcome(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred with ``d``'s result, ``d`` keeping it for its other readers."""
    copy = defer.Deferred()

    def both(result):
        copy.callback(result)
        return result

    d.addCallback(both)
    return copy


class WorkerProcess(ProcessProtocol):
    """One worker: its output relayed to the supervisor's log, its end reported."""

    def __init__(self, slot: int, started: float, observer=globalLogPublisher):
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self.ready = False
        #: fires with whether it became ready (Supervisor._watch_readiness)
        self.readiness: defer.Deferred | None = None
        self.exit: str | None = None  # how it ended, once it has
        self.ended = defer.Deferred()
        self._observer = observer
        self._out = bytearray()
        self._err = bytearray()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        for line in _lines(self._out, data):
            self._relay(line)

    def errReceived(self, data: bytes) -> None:
        for line in _lines(self._err, data):
            if line.strip():
                log.warn("worker {slot}: {line}", slot=self.slot, line=logsafe.text(line.decode("utf-8", "replace")))

    def _relay(self, line: bytes) -> None:
        """One JSON event of the worker, to the supervisor's observers."""
        try:
            event = eventFromJSON(line.strip(b"\x1e\r\n ").decode("utf-8"))
            level = event["log_level"].name
        except (ValueError, KeyError, AttributeError, TypeError):
            if line.strip():
                log.warn("worker {slot}: {line}", slot=self.slot, line=logsafe.text(line.decode("utf-8", "replace")))
            return
        if event.get(READY) and not self.ready:
            self.ready = True
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        event["log_system"] = f"worker {self.slot} {system}"
        # The worker passed it to Django's LOGGING already (logbridge).
        event[FORWARDED] = True
        self._observer(event)

    def processEnded(self, reason) -> None:
        status = reason.value
        if self._out:  # a last line without its end
            self._relay(bytes(self._out))
        if self._err:
            self.errReceived(b"\n")
        if getattr(status, "signal", None):
            self.exit = f"was killed by signal {status.signal}"
        else:
            self.exit = f"exited with status {getattr(status, 'exitCode', None) or 0}"
        self.ended.callback(self)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass


class Supervisor(MultiService):
    """Binds the endpoints, runs ``count`` workers on them and keeps them running."""

    #: As Ws4RedisService's: in the foreground a port that cannot be bound ends the process with one line.
    exit_on_listen_error = False

    def __init__(self, config: ServerConfig, count: int, reactor, embedded: EmbeddedRedis | None = None,
                 executable: str = sys.executable):
        super().__init__()
        self.config = config
        self.count = count
        self.reactor = reactor
        self.executable = executable
        self.embedded = embedded
        if embedded is not None:
            EmbeddedRedisService(embedded, reactor).setServiceParent(self)
        self.ports: list[IListeningPort] = []
        # Each worker's websockets and cap, for the others to see (loadshare.py).
        self._load_file = tempfile.TemporaryFile()
        self._load_file.truncate(SharedLoad.size(count))
        self.load = SharedLoad(self._load_file.fileno(), count)
        #: slot -> the worker serving it
        self.workers: dict[int, WorkerProcess] = {}
        #: every worker process not ended yet (a roll's new and old ones too)
        self.processes: set[WorkerProcess] = set()
        self._quick_deaths = [0] * count
        self._restarts: dict[int, object] = {}
        self._rolling = False
        self._stopping = False
        self._ever_ready = False
        self._previous_sighup = None

    # -- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound here, before privileges are dropped (--uid): the workers start
        # afterwards, as the user the supervisor runs as then.
        for description in self.config.endpoints:
            try:
                self.ports.append(bind(serverFromString(self.reactor, description)))
            except (CannotListenError, OSError, OverflowError) as exc:
                if not self.exit_on_listen_error:
                    raise
                raise SystemExit(f"ws4redis: cannot listen on {description}: {exc}") from None
            log.info("Listening on {endpoint} for {count} worker(s)", endpoint=description, count=self.count)
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()  # an embedded Redis first: the workers connect to it
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        for slot in range(self.count):
            self._start(slot)

    def _sighup(self, signum, frame) -> None:
        self.reactor.callFromThread(self.roll)

    def _arguments(self, slot: int) -> list[str]:
        config = self.config
        if self.embedded is not None:
            config = ServerConfig(**{**vars(config), "redis": f"unix://{self.embedded.socket_path}"})
        descriptors = ",".join(str(3 + index) for index in range(len(self.ports)))
        return [self.executable, "-m", "twisted_ws4redis.server.worker", f"--slot={slot}",
                f"--slots={self.count}", f"--listen-fds={descriptors}", f"--load-fd={3 + len(self.ports)}",
                *worker_arguments(config)]

    def _spawn(self, slot: int) -> WorkerProcess:
        worker = WorkerProcess(slot, self.reactor.seconds())
        child_fds = {0: "w", 1: "r", 2: "r"}
        child_fds.update({3 + index: port.fileno() for index, port in enumerate(self.ports)})
        child_fds[3 + len(self.ports)] = self._load_file.fileno()
        env = dict(os.environ)
        # What this process imports from (manage.py's directory, --pythonpath), the workers too.
        env["PYTHONPATH"] = os.pathsep.join([path for path in sys.path if path] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.reactor.spawnProcess(worker, self.executable, self._arguments(slot), env=env,
                                  path=os.getcwd(), childFDs=child_fds)
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
            deaths = self._quick_deaths[slot] = self._quick_deaths[slot] + 1
            delay = min(RESTART_FIRST_DELAY * 2 ** max(deaths - 1, 0), RESTART_MAX_DELAY)
            log.error("Worker {slot} cannot be started ({error}); trying again in {delay} s", slot=slot,
                      error=str(exc), delay=delay)
            self._restarts[slot] = self.reactor.callLater(delay, self._start, slot)

    def _watch_readiness(self, worker: WorkerProcess) -> defer.Deferred:
        """Fires with whether ``worker`` became ready before it ended or READY_TIMEOUT passed."""

        def settled(ready) -> bool:
            if worker.ready:
                self._ever_ready = True
                log.info("Worker {slot} (pid {pid}) is ready", slot=worker.slot, pid=worker.pid)
            elif worker.exit is None and not self._stopping:
                log.error("Worker {slot} (pid {pid}) is not ready after {timeout} s", slot=worker.slot,
                          pid=worker.pid, timeout=READY_TIMEOUT)
            return bool(worker.ready)

        return wait_until(self.reactor, lambda: worker.ready or worker.exit is not None,
                          READY_TIMEOUT).addCallback(settled)

    # -- a worker ended ----------------------------------------------------------

    def _ended(self, worker: WorkerProcess) -> None:
        self.processes.discard(worker)
        if self.workers.get(worker.slot) is not worker:
            return  # replaced in a roll, or never taken on
        del self.workers[worker.slot]
        self.load.clear(worker.slot, worker.pid)  # no room there until its successor says so
        if self._stopping:
            return
        if not self._ever_ready:
            log.critical("Worker {slot} {exit} before any worker was ready: stopping (see its lines above)",
                         slot=worker.slot, exit=worker.exit)
            self._fail()
            return
        quick = self.reactor.seconds() - worker.started < STEADY_AFTER
        deaths = self._quick_deaths[worker.slot] = self._quick_deaths[worker.slot] + 1 if quick else 0
        delay = min(RESTART_FIRST_DELAY * 2 ** max(deaths - 1, 0), RESTART_MAX_DELAY)
        log.warn("Worker {slot} (pid {pid}) {exit}; restarting it in {delay} s", slot=worker.slot,
                 pid=worker.pid, exit=worker.exit, delay=delay)
        self._restarts[worker.slot] = self.reactor.callLater(delay, self._start, worker.slot)

    def _fail(self) -> None:
        """End the process with status 1 once the reactor has stopped."""

        def exit_failing() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            # twistd exits 0 after its reactor stops, and has no way to say otherwise.
            os._exit(1)

        self.reactor.addSystemEventTrigger("after", "shutdown", exit_failing)
        self.reactor.stop()

    # -- SIGHUP: one at a time -----------------------------------------------------

    @defer.inlineCallbacks
    def roll(self):
        """Replace every worker, one at a time: a new worker takes the slot
        once it is ready, then the old one stops gracefully."""
        if self._rolling or self._stopping:
            log.info("SIGHUP ignored: {what}", what="a restart is under way" if self._rolling else "stopping")
            return
        self._rolling = True
        log.info("SIGHUP: restarting the {count} worker(s) one at a time", count=self.count)
        try:
            for slot in range(self.count):
                if self._stopping:
                    return
                new = self._spawn(slot)
                ready = yield _outcome(new.readiness)
                if not ready or self._stopping:
                    new.signal("TERM")
                    if not self._stopping:
                        log.error("Worker {slot}'s replacement {exit}: the restart stops, worker {slot} keeps "
                                  "running", slot=slot, exit=new.exit or "was not ready in time")
                    return
                pending = self._restarts.pop(slot, None)
                if pending is not None:
                    pending.cancel()
                old = self.workers.get(slot)
                self.workers[slot] = new
                if old is not None:
                    old.signal("TERM")
                    stopped = yield wait_until(self.reactor, lambda: old.exit is not None,
                                               self.config.grace + STOP_MARGIN)
                    if not stopped:
                        log.warn("Worker {slot} (pid {pid}) did not stop in time: killed", slot=slot, pid=old.pid)
                        old.signal("KILL")
                        yield wait_until(self.reactor, lambda: old.exit is not None, 5.0)
            log.info("SIGHUP: every worker restarted")
        finally:
            self._rolling = False

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
        for worker in running:
            worker.signal("TERM")
        yield wait_until(self.reactor, lambda: not self.processes, self.config.grace + STOP_MARGIN)
        for worker in list(self.processes):
            log.warn("Worker {slot} (pid {pid}) did not stop in time: killed", slot=worker.slot, pid=worker.pid)
            worker.signal("KILL")
        yield wait_until(self.reactor, lambda: not self.processes, 5.0)
        for port in self.ports:
            yield defer.maybeDeferred(port.stopListening)
        yield MultiService.stopService(self)
        # A completed graceful stop is a success (as Ws4RedisService says).
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
