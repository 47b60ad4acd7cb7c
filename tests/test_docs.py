"""The documentation in docs/: the settings reference generated from conf.RULES
covers every setting, with a description and an example that validates; every
page is in the table of contents; the developers' table of tests names every
test module. (``make docs`` builds the whole site, warnings as errors; Sphinx
is not among the test dependencies, so this checks the generator's output.)"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytestmark = pytest.mark.usefixtures("django_in_process")


@pytest.fixture(scope="module")
def reference() -> str:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from settings_reference import reference_lines
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return "\n".join(reference_lines())


def rules():
    from twisted_ws4redis.conf import RULES

    return RULES


def test_every_setting_has_a_description_and_an_example():
    for name, rule in rules().items():
        assert rule.doc.strip(), f"{name} has no doc"
        assert rule.example.strip(), f"{name} has no example"


def test_every_example_is_a_value_the_setting_accepts():
    """An example is a Python literal as written in settings.py, and its rule
    accepts it, but for dotted paths into a project (``mysite....``), which
    cannot import here."""
    for name, rule in rules().items():
        value = ast.literal_eval(rule.example)
        assert value != rule.default, f"{name}'s example is its default"
        try:
            rule.validate(name, value)
        except ImproperlyConfigured as exc:
            assert "cannot import 'mysite." in str(exc), f"{name} refuses its example: {exc}"  # noqa: PT017 (it may pass too)


def test_the_reference_lists_every_setting_with_its_default_example_and_check_id(reference):
    for name, rule in rules().items():
        entry = reference.split(f".. _setting-{name}:", 1)[1].split(".. _setting-", 1)[0]
        assert f"``{name}``" in entry
        assert f":Default: ``{rule.default!r}``" in entry
        assert f":Example: ``{name} = {rule.example}``" in entry
        assert f":Check id: ``{rule.check_id}``" in entry
        assert rule.doc.splitlines()[0] in entry
    assert reference.count(".. _setting-") == len(rules())


def test_the_reference_names_the_django_settings_the_server_reads(reference):
    for name in ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "DEBUG", "USE_X_FORWARDED_HOST"):
        assert f"``{name}``" in reference.splitlines()[-1]


def test_every_page_is_in_the_table_of_contents_and_exists():
    index = (DOCS / "index.rst").read_text()
    toc = re.search(r"\.\. toctree::\n(?:   :.*\n)*\n((?:   \S+\n)+)", index).group(1).split()
    pages = {path.stem for path in DOCS.glob("*.rst")} | {path.stem for path in DOCS.glob("*.md")}
    assert sorted(pages - {"index"}) == sorted(toc)
    for key in ("quickstart", "settings", "api", "deployment", "architecture", "performance"):
        assert key in toc


def test_the_deployment_page_includes_the_shipped_configurations():
    deployment = (DOCS / "deployment.rst").read_text()
    for shipped in sorted((DOCS / "deploy").iterdir()):
        assert f".. literalinclude:: deploy/{shipped.name}" in deployment
        assert shipped.is_file()


def test_the_developers_table_names_every_test_module():
    architecture = (DOCS / "architecture.rst").read_text()
    listed = set(re.findall(r"^``(test_\w+)``", architecture, re.MULTILINE))
    modules = {path.stem for path in (ROOT / "tests").glob("test_*.py")}
    assert listed == modules
