"""The Python x Django combinations twisted_ws4redis supports, each in its own
virtualenv under ``.nox/`` (``make matrix``; README "Development").

``nox`` runs the suite on all three; ``nox -s "tests(3.12-django6.0)"`` on one; arguments
after ``--`` go to pytest. An interpreter that cannot be found fails the session
instead of skipping it, so a green run means all three ran.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

#: (Python, Django): the oldest supported pair, then each newer Django on the Python it was tested with.
COMBINATIONS = [("3.11", "5.2"), ("3.12", "6.0"), ("3.13", "6.1")]

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True


def interpreter(version: str) -> str:
    """``pythonX.Y`` from PATH, else from pyenv's versions (installed but not
    enabled, pyenv's shims refuse to run it), else the bare version for nox to
    report as missing."""
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")))
    return candidates[-1] if candidates else version


@nox.session
@nox.parametrize(
    ("python", "django"),
    [nox.param(interpreter(python), django, id=f"{python}-django{django}") for python, django in COMBINATIONS],
)
def tests(session: nox.Session, django: str) -> None:
    """The test suite against one Django feature release (its latest patch)."""
    # Compat editable mode, as `make install`: twistd must see the plugin in twisted/plugins/.
    session.install(
        "--config-settings", "editable_mode=compat", "-e", ".[test,testing,embedded]", f"Django=={django}.*"
    )
    session.run("python", "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))")
    session.run(
        "python", "-c", f"import django; assert django.get_version().startswith('{django}.'), django.get_version()"
    )
    session.run("python", "-m", "pytest", *session.posargs)
