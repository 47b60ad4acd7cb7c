#!/usr/bin/env bash
# Run the reference, django-websocket-redis 0.6.0 (ws4redis) under uWSGI +
# gevent, configured like the example project twisted_ws4redis is benchmarked
# with (prefix "demo", heartbeat, database sessions, user john/secret), so that
# bench/wsload.py can measure both on this machine. Everything lives in $SCRATCH.
#
#   REDIS=127.0.0.1:6379 PORT=8100 CPU=0 bench/reference/run_reference.sh
#
# Runs uWSGI in the foreground (a master and one worker); the master's PID is
# in $SCRATCH/master.pid, and the worker, whose RSS and CPU wsload.py should
# read (--server-pid), is its child: pgrep -P "$(cat $SCRATCH/master.pid)".
set -euo pipefail
PORT=${PORT:-8100}
REDIS=${REDIS:-127.0.0.1:6379}
CPU=${CPU:-0}
SCRATCH=${SCRATCH:-/tmp/ws4redis-ref}
PYTHON=${PYTHON:-python3}
mkdir -p "$SCRATCH/refproject/templates/registration"
cd "$SCRATCH"

if [ ! -x venv/bin/uwsgi ]; then
    "$PYTHON" -m venv venv
    venv/bin/pip install --quiet "django-websocket-redis==0.6.0" "Django>=5.2,<6" redis gevent greenlet six uwsgi
fi

cat > refproject/__init__.py <<'PY'
PY
cat > refproject/settings.py <<PY
SECRET_KEY = "reference-benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "ws4redis"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware", "django.middleware.csrf.CsrfViewMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware"]
ROOT_URLCONF = "refproject.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": ["$SCRATCH/refproject/templates"],
              "OPTIONS": {"context_processors": ["django.template.context_processors.request"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "$SCRATCH/db.sqlite3"}}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
LOGIN_REDIRECT_URL = "/accounts/login/"
USE_TZ = True
WEBSOCKET_URL = "/ws/"
WS4REDIS_PREFIX = "demo"
WS4REDIS_EXPIRE = 3600
WS4REDIS_HEARTBEAT = "--heartbeat--"
# max_connections: redis-py now caps a pool at 100 connections by default (the
# redis-py of ws4redis' time had no cap), and ws4redis holds one per websocket.
WS4REDIS_CONNECTION = {"host": "${REDIS%:*}", "port": ${REDIS#*:}, "db": 0, "max_connections": 2 ** 31}
PY
cat > refproject/urls.py <<'PY'
from django.urls import include, path

urlpatterns = [path("accounts/", include("django.contrib.auth.urls"))]
PY
cat > refproject/templates/registration/login.html <<'HTML'
<form method="post">{% csrf_token %}{{ form.username }}{{ form.password }}<button>Sign in</button></form>
HTML
# ws4redis' documented single-process deployment: one WSGI callable that sends
# WEBSOCKET_URL to ws4redis' uWSGI server and everything else to Django.
cat > refproject/wsgi.py <<'PY'
import os

# As ws4redis' manual says for uWSGI + gevent: redis-py on gevent's sockets.
import gevent.socket
import redis.connection

redis.connection.socket = gevent.socket
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "refproject.settings")
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from ws4redis.uwsgi_runserver import uWSGIWebsocketServer  # noqa: E402

django_app = get_wsgi_application()
websocket_app = uWSGIWebsocketServer()


def application(environ, start_response):
    if environ.get("PATH_INFO", "").startswith(settings.WEBSOCKET_URL):
        return websocket_app(environ, start_response)
    return django_app(environ, start_response)
PY

export PYTHONPATH="$SCRATCH" DJANGO_SETTINGS_MODULE=refproject.settings
venv/bin/python -m django migrate --noinput -v0
venv/bin/python -c '
import django; django.setup()
from django.contrib.auth.models import User
User.objects.filter(username="john").exists() or User.objects.create_user("john", password="secret")'

exec taskset -c "$CPU" venv/bin/uwsgi --master --workers 1 --gevent 1000 --http-websockets \
    --http-socket "127.0.0.1:$PORT" --module refproject.wsgi --disable-logging \
    --safe-pidfile "$SCRATCH/master.pid"
