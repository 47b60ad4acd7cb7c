"""``twistd ws4redis``: command-line options and ``makeService``.

The same option table drives ``manage.py runws4redis``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import django
from twisted.logger import Logger
from twisted.python import usage

from .service import ServerConfig
from .supervisor import worker_count

log = Logger()

T = TypeVar("T")

#: (long name, default, help) of the options that take a value.
OPTIONS: list[tuple[str, Any, str]] = [
    ("settings", None, "Django settings module (DJANGO_SETTINGS_MODULE), e.g. mysite.settings."),
    ("wsgi", None, "Dotted path of the WSGI application; default: settings.WSGI_APPLICATION."),
    ("threads", ServerConfig.threads, "Most threads running Django code (WSGI requests and websocket handshakes)."),
    ("grace", ServerConfig.grace, "Seconds a stop (SIGTERM) waits for HTTP requests being answered."),
    (
        "redis",
        None,
        (
            "Redis to use instead of WS4REDIS_CONNECTION: redis://host:port/db, "
            "rediss://…, unix:///path?db=N, redis+sentinel://host:port[,…]/service[/db], "
            "redis+cluster://host:port[,host:port…] (a Redis Cluster's startup nodes; "
            "rediss+cluster:// for TLS), or 'embedded' for a private redis-server "
            "on a unix socket of this process only (a publisher in another process, "
            "e.g. manage.py shell or a task worker, cannot reach it)."
        ),
    ),
    (
        "workers",
        None,
        (
            "Worker processes sharing the endpoints: a number, or 'auto' (one per CPU). Each has "
            "its own threads and Redis connections; this process supervises them (restarts one "
            "that dies, SIGTERM stops all gracefully, SIGHUP restarts them one at a time). "
            "Default: no workers, this process serves."
        ),
    ),
    (
        "metrics",
        None,
        (
            "Twisted endpoint serving Prometheus metrics (GET /metrics) and the health check (GET /health), "
            "e.g. tcp:9100:interface=127.0.0.1; with --workers the supervisor serves it, every worker's "
            "metrics labelled worker=N. Default: none."
        ),
    ),
]
ENDPOINT_HELP = (
    "Twisted endpoint to listen on (repeatable), e.g. tcp:8000, ssl:8443:privateKey=key.pem, unix:/run/ws.sock; "
    "default tcp:8000."
)
FLAGS: list[tuple[str, str]] = [
    ("no-wsgi", "Serve websockets only (and static files with --static), not the Django application."),
    ("static", "Serve STATIC_URL (from STATIC_ROOT, or the static files finders when it is not set)."),
]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Websockets for Django (ws4redis-compatible) and the Django application, on one port."
    optParameters: ClassVar[list[list]] = [[name, None, default, help] for name, default, help in OPTIONS]
    optFlags: ClassVar[list[list]] = [[name, None, help] for name, help in FLAGS]

    def __init__(self):
        super().__init__()
        self["endpoint"] = []

    def opt_endpoint(self, description: str) -> None:
        self["endpoint"].append(description)

    opt_endpoint.__doc__ = ENDPOINT_HELP

    def postOptions(self) -> None:
        for name, kind, what in (("threads", int, "a whole number"), ("grace", float, "a number of seconds")):
            try:
                self[name] = kind(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be {what}, got {self[name]!r}") from None
        try:
            worker_count(self["workers"])
        except ValueError as exc:
            raise usage.UsageError(str(exc)) from None


def server_config(options: dict[str, Any]) -> ServerConfig:
    """A ServerConfig from parsed options (twistd's or the management command's)."""
    return ServerConfig(
        endpoints=list(options.get("endpoint") or ["tcp:8000"]),
        wsgi=options.get("wsgi"),
        serve_wsgi=not options.get("no-wsgi", options.get("no_wsgi", False)),
        threads=int(ServerConfig.threads if options.get("threads") is None else options["threads"]),
        redis=options.get("redis"),
        static=bool(options.get("static")),
        grace=float(ServerConfig.grace if options.get("grace") is None else options["grace"]),
        workers=worker_count(options.get("workers")),
        metrics=options.get("metrics") or None,
    )


def run_settings_checks() -> None:
    """The settings' system checks, those of ``manage.py check`` (which also
    honours ``SILENCED_SYSTEM_CHECKS``): warnings are logged, errors raise
    ImproperlyConfigured listing every problem, warnings included."""
    from django.core.exceptions import ImproperlyConfigured

    from ..checks import check_settings

    problems = [problem for problem in check_settings() if not problem.is_silenced()]
    lines = [
        f"({problem.id}) {problem.msg}{f' HINT: {problem.hint}' if problem.hint else ''}"
        for problem in sorted(problems, key=lambda problem: not problem.is_serious())
    ]
    if any(problem.is_serious() for problem in problems):
        raise ImproperlyConfigured("\n".join(lines))
    for line in lines:
        log.warn("{problem}", problem=line)


def setup_django(settings_module: str | None) -> None:
    """Django set up as ``manage.py`` would, for twistd and for a worker."""
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise SystemExit("twistd ws4redis: give --settings=mysite.settings (or set DJANGO_SETTINGS_MODULE)")
    # Like manage.py, find the project in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    reported(django.setup)


def reported(make: Callable[[], T]) -> T:
    """``make()``; a bad setting, option or import ends the process with one
    line naming it (every bad setting at once)."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        return make()
    except (ImproperlyConfigured, ValueError, ImportError, RuntimeError) as exc:
        settings_module = os.environ["DJANGO_SETTINGS_MODULE"]
        if isinstance(exc, ImportError) and exc.name and f"{settings_module}.".startswith(f"{exc.name}."):
            raise SystemExit(
                f"twistd ws4redis: {exc} (run twistd from the directory that holds "
                f"manage.py and the {settings_module.split('.')[0]!r} package, "
                f"or add that directory to PYTHONPATH)"
            ) from None
        raise SystemExit(f"twistd ws4redis: {exc}") from None


def build(config: ServerConfig, reactor=None, logs_to_stdout: bool = True):
    """The server ``config`` asks for: this process serving, or (``--workers``)
    the supervisor of its workers (supervisor.py), whose workers write their
    log lines to its standard output themselves when that is where it logs."""
    if not config.workers:
        from .service import make_service

        return make_service(config, reactor)
    if reactor is None:
        from twisted.internet import reactor
    from .logbridge import forward_to_stdlib
    from .service import redis_address_for
    from .supervisor import Supervisor

    # The workers' Redis, and a check of --redis before any worker starts.
    _, embedded = redis_address_for(config.redis)
    # The supervisor's own events (a worker died, was killed, cannot start) to LOGGING too;
    # the relayed ones are marked as forwarded by their worker.
    forward_to_stdlib()
    return Supervisor(config, reactor, embedded, share_output=logs_to_stdout)


def makeService(options: Options):
    """Set Django up, run the system checks of the settings (as ``manage.py check``),
    build the server. A bad setting or option ends twistd here with a message
    naming it (every bad setting at once)."""
    setup_django(options["settings"])

    twistd: Any = options.parent or {}  # twistd's Options, a mapping
    logs_to_stdout = bool(twistd.get("nodaemon") and twistd.get("logfile") in (None, "-") and not twistd.get("syslog"))

    def checked():
        run_settings_checks()
        return build(server_config(options), logs_to_stdout=logs_to_stdout)

    service = reported(checked)
    service.exit_on_listen_error = bool(options.parent is not None and options.parent.get("nodaemon"))
    return service
