"""Every event the server logs with twisted.logger also goes to the standard
library's ``logging``, so that Django's LOGGING, Sentry and friends see it;
twistd's own log is unchanged.

twisted.logger's STDLibLogObserver writes every event to one logger and passes
none of its fields; this observer takes the logger named after the event's
namespace (``twisted_ws4redis.server.protocol``…) and passes the fields as ``extra``.
Like twistd's own log, a handler that blocks (mail, a network socket) blocks
the reactor: point those at a ``QueueHandler``.
"""

from __future__ import annotations

import logging
from functools import cache

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, LogPublisher, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from .. import logsafe

#: The namespaces forwarded: this package's modules.
NAMESPACE = "twisted_ws4redis"

#: ``record.ws4redis`` holds the event's own fields as a dict, and each field is
#: also ``record.ws4redis_<name>``: names no LogRecord attribute has.
FIELDS_ATTRIBUTE = "ws4redis"

#: The key that marks an event as passed on: twistd's log begins after the
#: server is made, and replays to every observer the events logged before.
FORWARDED = "log_ws4redis_forwarded"

#: Keys the legacy twisted.python.log wrapper (twistd's file observer) adds to
#: the events it has seen: not fields of ours.
LEGACY_KEYS = frozenset({"message", "time", "system", "format", "isError", "why", "failure"})

LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


def event_fields(event: LogEvent) -> dict[str, object]:
    """The keyword arguments the event was logged with (already made safe by
    the code that logs it, see logsafe), without twisted.logger's own keys."""
    return {key: value for key, value in event.items() if not key.startswith("log_") and key not in LEGACY_KEYS}


def extra(fields: dict[str, object]) -> dict[str, object]:
    """``logging``'s ``extra`` for ``fields``: ``ws4redis`` (the dict) and each
    field as ``ws4redis_<name>``, on every record of a twisted_ws4redis logger."""
    named = {f"{FIELDS_ATTRIBUTE}_{name}": value for name, value in fields.items()}
    return {FIELDS_ATTRIBUTE: fields, **named}


@cache
def stdlib_logger(namespace: str) -> logging.Logger:
    """The logger named ``namespace``, with a NullHandler: a record no handler
    takes would otherwise be printed once more to stderr (logging's last
    resort), which twistd writes into its log as a second copy."""
    logger = logging.getLogger(namespace)
    logger.addHandler(logging.NullHandler())
    return logger


@provider(ILogObserver)
def to_stdlib(event: LogEvent) -> None:
    """Pass an event of this package's namespace to ``logging``."""
    namespace = event.get("log_namespace") or ""
    if FORWARDED in event or not (namespace == NAMESPACE or namespace.startswith(NAMESPACE + ".")):
        return
    event[FORWARDED] = True
    logger = stdlib_logger(namespace)
    level = LEVELS.get(event.get("log_level"), logging.INFO)
    if not logger.isEnabledFor(level):
        return
    failure = event.get("log_failure")
    exc_info = None if failure is None else (failure.type, failure.value, failure.getTracebackObject())
    logger.log(level, formatEvent(event), exc_info=exc_info, extra=extra(event_fields(event)))


def forward_to_stdlib(publisher: LogPublisher = globalLogPublisher) -> None:
    """Start forwarding; calling it again changes nothing."""
    publisher.addObserver(to_stdlib)


class ToTwistedLog(logging.Handler):
    """The other way, for one logger outside this package: ``django.dispatch``,
    where ``send_robust`` logs a signal receiver that raised (with its
    traceback). Without this, such a line reaches twistd's log only where
    LOGGING sends it to stderr (DEBUG's console handler). The event is logged
    on the reactor thread (the record comes from a pool thread) and, being of
    that logger's namespace, is not passed back to ``logging``."""

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor

    def emit(self, record: logging.LogRecord) -> None:
        level = next(
            (twisted for twisted, stdlib in reversed(LEVELS.items()) if record.levelno >= stdlib), LogLevel.debug
        )
        # A receiver's message may quote what a client sent.
        line = logsafe.text(record.getMessage())
        logger = Logger(namespace=record.name)
        if record.exc_info:
            failure = Failure(record.exc_info[1], record.exc_info[0], record.exc_info[2])
            self.reactor.callFromThread(logger.failure, "{line}", failure, level, line=line)
        else:
            self.reactor.callFromThread(logger.emit, level, "{line}", line=line)


def forward_to_twisted(name: str, reactor) -> None:
    """Log what the logger ``name`` logs in the server's log too; calling it
    again changes nothing."""
    stdlib = logging.getLogger(name)
    if not any(isinstance(handler, ToTwistedLog) for handler in stdlib.handlers):
        stdlib.addHandler(ToTwistedLog(reactor))
