"""``twistd --help`` lists ws4redis after a regular install (a wheel) and after
the editable install ``make install`` does; the wheel ships the plugin module
without the ``__init__.py`` files that would shadow Twisted's own packages."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import BIN, ROOT

OPTIONS = ("--settings", "--endpoint", "--wsgi", "--no-wsgi", "--threads", "--redis", "--static")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(out), str(ROOT)], check=True, cwd=out)
    (path,) = out.glob("twisted_ws4redis-*.whl")
    return path


def test_the_wheel_holds_the_plugin_and_no_twisted_package_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/ws4redis_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "twisted_ws4redis/static/twisted_ws4redis/js/ws4redis.js" in names
    assert "twisted_ws4redis/static/twisted_ws4redis/js/ws4redis.mjs" in names


def test_twistd_lists_the_plugin_after_a_regular_install(wheel, tmp_path):
    """A fresh virtualenv with only the wheel installed; the dependencies are
    borrowed from the test virtualenv (a path line, so the editable install's
    own .pth files are not read and the checkout is not on sys.path)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / "venv" / site.split(str(venv) + "/", 1)[1] / "borrowed.pth").write_text(
        sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True)
    where = subprocess.run([python, "-c", "import twisted_ws4redis; print(twisted_ws4redis.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(venv))
    listing = subprocess.run([python, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert "ws4redis" in listing.stdout, listing.stdout + listing.stderr


def test_twistd_lists_the_plugin_after_the_editable_install():
    listing = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, cwd="/")
    assert "ws4redis" in listing.stdout


def test_twistd_ws4redis_help_lists_its_options():
    usage = subprocess.run([str(BIN / "twistd"), "ws4redis", "--help"], capture_output=True, text=True, cwd="/")
    for option in OPTIONS:
        assert option in usage.stdout
