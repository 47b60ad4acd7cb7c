"""Settings of the project the end-to-end tests serve with ``twistd ws4redis``.

``WS4REDIS_TEST_OVERRIDES`` (JSON) replaces any setting, so one project serves
every configuration under test."""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "twisted_ws4redis",
    "testproject",
    "testproject.chatapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("TEST_DB", "/tmp/ws4redis-test.sqlite3")}
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
STATIC_URL = "/static/"

WEBSOCKET_URL = "/ws/"
WS4REDIS_EXPIRE = 0

globals().update(json.loads(os.environ.get("WS4REDIS_TEST_OVERRIDES", "{}")))

# tests/test_signals.py: receivers of the websocket signals.
if globals().get("TEST_SIGNAL_RECEIVERS"):
    INSTALLED_APPS = [*INSTALLED_APPS, "testproject.receivers.Recording"]
