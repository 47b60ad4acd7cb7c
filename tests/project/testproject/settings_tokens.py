"""The test project with Django REST framework's token app and its token
views (tests/test_token_auth.py), apart so that no other test serves them."""

from .settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework.authtoken"]  # noqa: F405
ROOT_URLCONF = "testproject.token_urls"
