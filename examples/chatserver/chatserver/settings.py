"""Settings of the example project (a development set-up: DEBUG on, SQLite)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "twisted_ws4redis",  # above staticfiles: its runserver serves websockets too
    "django.contrib.staticfiles",
    "chatserver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "chatserver.urls"
WSGI_APPLICATION = "chatserver.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "twisted_ws4redis.context_processors.default",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHATSERVER_DB", str(BASE_DIR / "db.sqlite3")),
        # Each server thread keeps its connection between handshakes and requests
        # instead of opening one per job (bench/README.md: +10 % session handshakes).
        "CONN_MAX_AGE": 60,
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("CHATSERVER_STATIC_ROOT", str(BASE_DIR / "static_root"))
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# twisted_ws4redis (the settings of ws4redis, same names and meaning)
WEBSOCKET_URL = "/ws/"
WS4REDIS_PREFIX = "demo"
WS4REDIS_EXPIRE = 3600
WS4REDIS_HEARTBEAT = "--heartbeat--"
WS4REDIS_CONNECTION = {"host": "localhost", "port": 6379, "db": 0}
# Token authentication for scripts (token_client.py, tokens from `manage.py ws_token`);
# without a token, the session cookie as before.
WS4REDIS_PROCESS_REQUEST = "twisted_ws4redis.auth.process_request"
# Least privilege: browsers publish only where a page needs it (the broadcast chat).
WS4REDIS_ALLOWED_CHANNELS = "chatserver.websocket_access.allowed_channels"
# History (needs Redis >= 6.2): the broadcast chat's page (ws4redis.v2) gets back
# what it missed while its connection was down, a server restart included.
WS4REDIS_HISTORY_SIZE = 100
# Who is on the broadcast chat, on every node (its page lists them).
WS4REDIS_PRESENCE = True
# The chat's form takes 2,000 characters (at most 8,000 bytes of UTF-8): no need for 1 MiB.
WS4REDIS_MAX_MESSAGE_SIZE = 8192
# Load balancers check this path (docs/deploy/haproxy.cfg): 200 while Redis is
# reachable and the server is not stopping, else 503. Outside WEBSOCKET_URL.
WS4REDIS_HEALTH_URL = "/ws4redis/health"
# Prometheus (twistd ws4redis --metrics=tcp:9100:interface=127.0.0.1): the open
# websockets of the group and user chats counted apart; the broadcast chat's
# ws4redis.v2 sockets (no facility in their URL) and any other under "other".
WS4REDIS_METRICS_FACILITIES = ["groupchat", "userchat"]
