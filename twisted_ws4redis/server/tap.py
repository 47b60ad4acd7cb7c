"""``twistd ws4redis``: command-line options and ``makeService``.

The same option table drives ``manage.py runws4redis``."""
from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from .service import ServerConfig

log = Logger()

#: (long name, default, help) of the options that take a value.
OPTIONS: list[tuple[str, Any, str]] = [
    ("settings", None, "Django settings module (DJANGO_SETTINGS_MODULE), e.g. mysite.settings."),
    ("wsgi", None, "Dotted path of the WSGI application; default: settings.WSGI_APPLICATION."),
    ("threads", ServerConfig.threads, "Most threads running Django code (WSGI requests and websocket handshakes)."),
    ("grace", ServerConfig.grace, "Seconds a stop (SIGTERM) waits for HTTP requests being answered."),
    ("redis", None, "Redis to use instead of WS4REDIS_CONNECTION: redis://host:port/db, "
                    "rediss://…, unix:///path?db=N, redis+sentinel://host:port[,…]/service[/db], "
                    "redis+cluster://host:port[,host:port…] (a Redis Cluster's startup nodes; "
                    "rediss+cluster:// for TLS), or 'embedded' for a private redis-server "
                    "on a unix socket of this process only (a publisher in another process, "
                    "e.g. manage.py shell or a task worker, cannot reach it)."),
]
ENDPOINT_HELP = "Twisted endpoint to listen on (repeatable), e.g. tcp:8000, ssl:8443:privateKey=key.pem, unix:/run/ws.sock; default tcp:8000."
FLAGS: list[tuple[str, str]] = [
    ("no-wsgi", "Serve websockets only (and static files with --static), not the Django application."),
    ("static", "Serve STATIC_URL (from STATIC_ROOT, or the static files finders when it is not set)."),
]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Websockets for Django (ws4redis-compatible) and the Django application, on one port."
    optParameters = [[name, None, default, help] for name, default, help in OPTIONS]
    optFlags = [[name, None, help] for name, help in FLAGS]

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
    )


def run_settings_checks() -> None:
    """The settings' system checks, those of ``manage.py check`` (which also
    honours ``SILENCED_SYSTEM_CHECKS``): warnings are logged, errors raise
    ImproperlyConfigured listing every problem, warnings included."""
    from django.core.exceptions import ImproperlyConfigured

    from ..checks import check_settings

    problems = [problem for problem in check_settings() if not problem.is_silenced()]
    lines = [f"({problem.id}) {problem.msg}{f' HINT: {problem.hint}' if problem.hint else ''}"
             for problem in sorted(problems, key=lambda problem: not problem.is_serious())]
    if any(problem.is_serious() for problem in problems):
        raise ImproperlyConfigured("\n".join(lines))
    for line in lines:
        log.warn("{problem}", problem=line)


def makeService(options: Options):
    """Set Django up, run the system checks of the settings (as ``manage.py check``),
    build the server. A bad setting or option ends twistd here with a message
    naming it (every bad setting at once)."""
    from django.core.exceptions import ImproperlyConfigured

    if options["settings"]:
        os.environ["DJANGO_SETTINGS_MODULE"] = options["settings"]
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise SystemExit("twistd ws4redis: give --settings=mysite.settings (or set DJANGO_SETTINGS_MODULE)")
    # Like manage.py, find the project in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        import django

        django.setup()
        from .service import make_service

        run_settings_checks()
        service = make_service(server_config(options))
    except (ImproperlyConfigured, ValueError, ImportError, RuntimeError) as exc:
        settings_module = os.environ["DJANGO_SETTINGS_MODULE"]
        if isinstance(exc, ImportError) and exc.name and f"{settings_module}.".startswith(f"{exc.name}."):
            raise SystemExit(f"twistd ws4redis: {exc} (run twistd from the directory that holds "
                             f"manage.py and the {settings_module.split('.')[0]!r} package, "
                             f"or add that directory to PYTHONPATH)") from None
        raise SystemExit(f"twistd ws4redis: {exc}") from None
    service.exit_on_listen_error = bool(options.parent is not None and options.parent.get("nodaemon"))
    return service
