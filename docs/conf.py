"""Sphinx configuration of twisted_ws4redis' documentation (``make docs``)."""

import os
import sys
from pathlib import Path

import django

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "_ext"), str(HERE.parent)]

from twisted_ws4redis import __version__  # noqa: E402 (the checkout first on sys.path)

# autodoc imports Django-side modules (models, auth, testing): Django must be set up.
os.environ["DJANGO_SETTINGS_MODULE"] = "docs_django_settings"
django.setup()

project = "twisted_ws4redis"
author = "the twisted_ws4redis developers"
copyright = "2026, the twisted_ws4redis developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "myst_parser",  # the benchmark pages are bench/*.md, written by `make bench`: included as they are
    "ws4redis_settings",
]

exclude_patterns = ["_build", "deploy"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
html_theme = "alabaster"
html_theme_options = {"page_width": "1160px", "sidebar_width": "240px"}
# Quotes and ellipses only: "--workers" stays two hyphens, not a dash.
smartquotes_action = "qe"
html_title = "twisted_ws4redis"
graphviz_output_format = "svg"

autodoc_member_order = "bysource"
# Types go beside the parameters the docstrings name, and the return type; the
# pages list each module's public names themselves (api.rst).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"

# No intersphinx: it downloads other projects' inventories at every build, and this
# build must work offline. Names of the standard library's and third-party objects
# that autodoc meets in signatures and type hints, which nothing here can link to,
# are therefore ignored; a name of our own that does not resolve still fails the build.
nitpick_ignore_regex = [
    ("py:.*", r"(django|redis|twisted|websockets|txredisapi|autobahn|contextlib)\..*"),
    # Django's, imported under their short names in the modules' type hints.
    ("py:class", r"AbstractBaseUser|HttpRequest"),
]
