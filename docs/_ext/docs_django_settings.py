"""The smallest Django settings that let autodoc import twisted_ws4redis' modules."""

SECRET_KEY = "only-for-building-the-documentation"  # noqa: S105 (no secret: it signs nothing)
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "twisted_ws4redis",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
