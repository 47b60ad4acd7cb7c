"""A worker of ``--workers`` (supervisor.py): a whole server on the listening
sockets it inherits (``--listen-fds``, one per ``--endpoint``), its log as
JSON events on stdout, a pipe the supervisor reads.

Run by the supervisor only: ``python -m twisted_ws4redis.server.worker``."""
from __future__ import annotations

import os
import signal
import sys

from twisted.logger import Logger, jsonFileLogObserver
from twisted.python import usage

from . import tap

log = Logger()


class WorkerOptions(tap.Options):
    optParameters = tap.Options.optParameters + [
        ["listen-fds", None, "", "The inherited listening descriptor of each --endpoint, comma-separated."],
        ["slot", None, "0", "This worker's number, in the supervisor's log."],
    ]


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
    # A terminal's hangup reaches the whole process group; SIGHUP is the supervisor's.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from twisted.internet import reactor

    from .protocol import wait_until
    from .pubsub import REDIS_WAIT
    from .service import run_in_foreground
    from .supervisor import READY

    config_options = dict(options)
    config_options["workers"] = None
    tap.setup_django(options["settings"])
    config = tap.reported(lambda: tap.server_config(config_options))
    config.inherited = [int(fd) for fd in options["listen-fds"].split(",") if fd]
    service = tap.reported(lambda: tap.build(config))
    service.exit_on_listen_error = True
    service.privilegedStartService()

    def ready(_) -> None:
        log.info("Worker {slot} (pid {pid}) is serving", slot=options["slot"], pid=os.getpid(), **{READY: True})

    reactor.callWhenRunning(
        lambda: wait_until(reactor, lambda: service.factory.bus.settled, REDIS_WAIT).addCallback(ready))
    run_in_foreground(service, reactor, observer=jsonFileLogObserver(sys.stdout))


if __name__ == "__main__":
    main()
