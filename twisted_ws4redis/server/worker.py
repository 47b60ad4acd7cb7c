"""A worker of ``--workers`` (supervisor.py): a whole server on the listening
sockets it inherits (``--listen-fds``, one per ``--endpoint``). It says it
is ready on ``--ready-fd``, and logs either text lines straight to the
supervisor's standard output or JSON events, which the supervisor relays.

Run by the supervisor only: ``python -m twisted_ws4redis.server.worker``."""

from __future__ import annotations

import copy
import os
import signal
import sys
from typing import IO, ClassVar

from twisted.logger import ILogObserver, Logger, jsonFileLogObserver, textFileLogObserver
from twisted.python import usage
from twisted.python.reflect import safe_str
from zope.interface import provider

from . import tap

log = Logger(namespace=__name__ if __name__ != "__main__" else "twisted_ws4redis.server.worker")


class WorkerOptions(tap.Options):
    optParameters: ClassVar[list[list]] = [
        *tap.Options.optParameters,
        ["listen-fds", None, "", "The inherited listening descriptor of each --endpoint, comma-separated."],
        ["slot", None, "0", "This worker's number, in the supervisor's log."],
        ["slots", None, "1", "How many workers the supervisor runs."],
        ["load-fd", None, None, "The file where the workers write their websocket counts (loadshare.py)."],
        ["ready-fd", None, None, "The pipe to write to once serving."],
        ["log", None, "json", "'text': lines on stdout, the supervisor's own; 'json': events it relays."],
    ]


def text_observer(out: IO[str], slot: int) -> ILogObserver:
    """Text lines as the supervisor writes its own, ``worker N`` in the system field."""
    from .supervisor import worker_system

    write = textFileLogObserver(out)

    @provider(ILogObserver)
    def observe(event) -> None:
        write({**event, "log_system": worker_system(slot, event)})

    return observe


def json_observer(out: IO[str]) -> ILogObserver:
    """JSON events on ``out``, a failure's message kept: eventAsJSON cannot
    persist the exception itself (the supervisor would print
    ``{'unpersistable': True}``)."""
    write = jsonFileLogObserver(out)

    @provider(ILogObserver)
    def observe(event) -> None:
        failure = event.get("log_failure")
        if failure is not None and not isinstance(failure.value, str):
            portable = copy.copy(failure)
            portable.value = safe_str(failure.value)
            event = {**event, "log_failure": portable}
        write(event)

    return observe


def main(argv: list[str] | None = None) -> None:
    options = WorkerOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as exc:
        raise SystemExit(f"ws4redis worker: {exc}") from None
    parent = os.getppid()
    from .embedded import die_with_parent

    die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        raise SystemExit(0)
    # Its own process group: a terminal's Ctrl-C and hangup are the supervisor's
    # to handle (it stops or restarts the workers), not each worker's.
    os.setpgrp()
    from twisted.internet import reactor

    from .loadshare import AcceptBalancer, SharedLoad
    from .protocol import wait_until
    from .pubsub import REDIS_WAIT
    from .service import run_in_foreground
    from .sharedports import AdoptedEndpoint

    slot = int(options["slot"])
    config_options = dict(options)
    config_options["workers"] = None
    tap.setup_django(options["settings"])
    config = tap.reported(lambda: tap.server_config(config_options))
    config.inherited = [int(fd) for fd in options["listen-fds"].split(",") if fd]
    service = tap.reported(lambda: tap.build(config))
    service.exit_on_listen_error = True
    service.privilegedStartService()

    def share_load() -> None:
        if options["load-fd"] is None:
            return
        ports = [
            child.endpoint.port for child in service if isinstance(getattr(child, "endpoint", None), AdoptedEndpoint)
        ]
        shared = SharedLoad(int(options["load-fd"]), int(options["slots"]))
        balancer = AcceptBalancer(service.factory.budget, shared, slot, ports, reactor)
        reactor.addSystemEventTrigger("before", "shutdown", balancer.stop)

    def stopping() -> None:
        # A second SIGTERM (the supervisor's after an operator's) would log
        # Twisted's "Can't stop reactor that isn't running" as critical.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def ready(_) -> None:
        log.info("Worker {slot} (pid {pid}) is serving", slot=slot, pid=os.getpid())
        if options["ready-fd"] is not None:
            fd = int(options["ready-fd"])
            os.write(fd, b"ready\n")
            os.close(fd)

    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.callWhenRunning(share_load)
    reactor.callWhenRunning(
        lambda: wait_until(reactor, lambda: service.factory.bus.settled, REDIS_WAIT).addCallback(ready)
    )
    observer = text_observer(sys.stdout, slot) if options["log"] == "text" else json_observer(sys.stdout)
    run_in_foreground(service, reactor, observer=observer)


if __name__ == "__main__":
    main()
