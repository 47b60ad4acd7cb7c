"""Twisted's reactor in a background thread, for programs that own the main
thread themselves (a test runner). A reactor runs at most once per process:
it is started on first use and then kept running; servers come and go as
services on it (see ``twisted_ws4redis.testing``).

Its thread and the workers of its thread pool are daemons, so the program
exits without stopping it (stopping it would mean it can never run again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import threads

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None


def daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    """A ``threading.Thread`` that does not keep the process alive (a
    ``ThreadPool.threadFactory``)."""
    return threading.Thread(*args, daemon=True, **kwargs)


def running_reactor(timeout: float = 10.0):
    """The global reactor, running in a daemon thread (started by the first call)."""
    from twisted.internet import reactor

    global _thread
    with _lock:
        if _thread is None:
            if reactor.running:
                raise RuntimeError("the reactor already runs in this process, not in a thread started here")
            started = threading.Event()
            reactor.callWhenRunning(started.set)
            reactor.getThreadPool().threadFactory = daemon_thread  # type: ignore[attr-defined]  # IReactorThreads
            _thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, name="twisted-reactor", daemon=True
            )
            _thread.start()
            if not started.wait(timeout):
                raise RuntimeError(f"the reactor did not start within {timeout} s")
        elif not _thread.is_alive():
            raise RuntimeError("the reactor thread has stopped; a reactor cannot run twice in one process")
    return reactor


def call_in_reactor(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function`` on the reactor thread and wait for its result (a
    Deferred's result if it returns one); its exception is raised here."""
    return threads.blockingCallFromThread(running_reactor(), function, *args, **kwargs)
