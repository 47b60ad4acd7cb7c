"""``twistd --help`` lists ws4redis after a regular install (the wheel, and
the sdist built and installed with its dependencies resolved) and after the
editable install ``make install`` does; ``python -m build`` makes both from the
checkout (the wheel from the sdist); the wheel ships the plugin module without
the ``__init__.py`` files that would shadow Twisted's own packages, and
everything else the package needs (a server run from the wheel alone serves
Django, its static files and websockets), its license, ``py.typed`` and the
JavaScript client; the installed version is ``twisted_ws4redis.__version__``;
uninstalling leaves twistd working."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from websockets.sync.client import connect

from conftest import BIN, PROJECT, ROOT, free_port, unique, wait_for_port, wait_subscribed
from twisted_ws4redis import __version__

OPTIONS = ("--settings", "--endpoint", "--wsgi", "--no-wsgi", "--threads", "--redis", "--static")
TWISTD = "from twisted.scripts.twistd import run; run()"
TIMEOUT = 5


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist and the wheel of ``python -m build``: it builds the wheel from
    the sdist, so the sdist holds all that a build needs."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        cwd=out,
        env=clean_env(),
        capture_output=True,
    )
    (sdist,) = out.glob("twisted_ws4redis-*.tar.gz")
    (wheel,) = out.glob("twisted_ws4redis-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def wheel(dists) -> Path:
    return dists[1]


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A virtualenv with only the wheel installed (no-deps); the dependencies
    are borrowed from the test virtualenv by a path line, so the editable
    install's own .pth files are not read and the checkout is not on sys.path.
    Returns its python."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        cwd=where,
        env=clean_env(),
    )
    return python


def clean_env(**extra: str) -> dict:
    """The environment without anything that would put the checkout on sys.path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "TEST_DB", "WS4REDIS_TEST_OVERRIDES")
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    return fresh_venv(tmp_path_factory.mktemp("installed"), wheel)


@pytest.fixture(scope="module")
def sdist_python(dists, tmp_path_factory) -> Path:
    """A virtualenv with the sdist installed as a user would: pip builds it and
    resolves its dependencies from the package index (the wheel's virtualenv
    borrows them). Returns its python."""
    where = tmp_path_factory.mktemp("from-sdist")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(dists[0])],
        capture_output=True,
        text=True,
        cwd=where,
        env=clean_env(),
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


@pytest.fixture(params=["venv_python", "sdist_python"])
def installed_python(request) -> Path:
    """The python of the wheel's virtualenv, then of the sdist's."""
    return request.getfixturevalue(request.param)


def test_the_wheel_holds_the_plugin_and_no_twisted_package_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/ws4redis_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "twisted/plugins/dropin.cache" not in names
    assert "twisted_ws4redis/static/twisted_ws4redis/js/ws4redis.js" in names
    assert "twisted_ws4redis/static/twisted_ws4redis/js/ws4redis.mjs" in names


def test_the_wheel_holds_every_file_of_the_package(wheel):
    """Every file of twisted_ws4redis/ under version control is shipped (a
    forgotten package_data pattern or a package without __init__.py would not be)."""
    tracked = git_files("twisted_ws4redis")
    assert "twisted_ws4redis/management/commands/runws4redis.py" in tracked
    missing = set(tracked) - set(zipfile.ZipFile(wheel).namelist())
    assert not missing


def test_the_sdist_holds_the_source_license_and_changelog(dists):
    """Everything under version control that the package, its tests and the
    example need (MANIFEST.in), the license, the changelog, and nothing that
    is not under version control but the metadata setuptools writes."""
    sdist, _ = dists
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = {member.name.removeprefix(top + "/") for member in archive.getmembers() if member.isfile()}
        license_text = archive.extractfile(f"{top}/LICENSE").read()
    assert {"LICENSE", "CHANGELOG.rst", "README.rst", "pyproject.toml", "Makefile", "pytest.ini", "noxfile.py"} <= names
    assert license_text == (ROOT / "LICENSE").read_bytes()
    tracked = set(git_files())
    assert {"tests/conftest.py", "tests/typescript/cjs.ts", "examples/chatserver/manage.py"} <= names
    assert not set(git_files("twisted_ws4redis", "twisted", "tests", "examples")) - names
    metadata = {"PKG-INFO", "setup.cfg"}
    untracked = {name for name in names - tracked - metadata if not name.startswith("twisted_ws4redis.egg-info/")}
    assert not untracked


def git_files(*paths: str) -> list[str]:
    return subprocess.run(
        ["git", "ls-files", *paths], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()


def test_the_wheel_holds_the_license_the_types_marker_and_the_javascript_client(wheel):
    archive = zipfile.ZipFile(wheel)
    dist_info = f"twisted_ws4redis-{__version__}.dist-info"
    assert wheel.name == f"twisted_ws4redis-{__version__}-py3-none-any.whl"
    assert archive.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Classifier: Typing :: Typed" in metadata.splitlines()
    names = archive.namelist()
    assert "twisted_ws4redis/py.typed" in names
    for name in ("ws4redis.js", "ws4redis.mjs", "ws4redis.d.ts", "ws4redis.d.mts", "package.json"):
        assert f"twisted_ws4redis/static/twisted_ws4redis/js/{name}" in names


def test_the_installed_version_is_the_package_version(installed_python, tmp_path):
    """importlib.metadata reads the version setuptools took from __version__."""
    versions = subprocess.run(
        [
            installed_python,
            "-c",
            (
                "import importlib.metadata, twisted_ws4redis; "
                "print(importlib.metadata.version('twisted_ws4redis'), twisted_ws4redis.__version__)"
            ),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    ).stdout.split()
    assert versions == [__version__, __version__]


def test_twistd_lists_the_plugin_after_a_regular_install(installed_python, tmp_path):
    """The package and the plugin module are the installed ones, in the fresh venv."""
    venv_python = installed_python
    venv = venv_python.parent.parent
    where = subprocess.run(
        [
            venv_python,
            "-c",
            (
                "import twisted_ws4redis, twisted.plugins.ws4redis_plugin as p; "
                "print(twisted_ws4redis.__file__); print(p.__file__)"
            ),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    ).stdout
    assert all(line.startswith(str(venv)) for line in where.split()), where
    listing = subprocess.run(
        [venv_python, "-c", TWISTD, "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=False,
    )
    assert "ws4redis" in listing.stdout, listing.stdout + listing.stderr


def test_twistd_ws4redis_help_lists_its_options_after_a_regular_install(venv_python, tmp_path):
    usage = subprocess.run(
        [venv_python, "-c", TWISTD, "ws4redis", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=False,
    )
    assert usage.returncode == 0, usage.stdout + usage.stderr
    for option in OPTIONS:
        assert option in usage.stdout


def test_a_regular_install_serves_django_static_files_and_websockets(
    venv_python, redis_server, redis_client, test_db, tmp_path
):
    """twistd ws4redis from the wheel alone (the test project on PYTHONPATH, not
    the checkout): Django, ws4redis.js through --static, a websocket."""
    port = free_port()
    env = clean_env(PYTHONPATH=str(PROJECT), DJANGO_SETTINGS_MODULE="testproject.settings", TEST_DB=test_db)
    where = subprocess.run(
        [venv_python, "-c", "import twisted_ws4redis; print(twisted_ws4redis.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env=env,
    ).stdout
    assert where.startswith(str(venv_python.parent.parent)), where
    with open(tmp_path / "twistd.log", "wb") as log:
        process = subprocess.Popen(
            [
                venv_python,
                "-c",
                TWISTD,
                "--nodaemon",
                "--pidfile=",
                "ws4redis",
                f"--endpoint=tcp:{port}:interface=127.0.0.1",
                f"--redis={redis_server.url}",
                "--static",
            ],
            env=env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"testproject")
        connection.request("GET", "/static/twisted_ws4redis/js/ws4redis.js")
        response = connection.getresponse()
        assert response.status == 200
        assert b"function WS4Redis" in response.read()
        connection.close()
        facility = unique("wheel")
        with connect(f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-broadcast", open_timeout=TIMEOUT) as ws:
            wait_subscribed(redis_client, f"broadcast:{facility}")
            redis_client.publish(f"broadcast:{facility}", "from a wheel")
            assert ws.recv(timeout=TIMEOUT) == "from a wheel"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    assert code == 0, (tmp_path / "twistd.log").read_text()


def test_twistd_works_without_the_plugin_after_an_uninstall(wheel, tmp_path):
    """pip uninstall leaves Twisted's plugin cache behind; twistd must neither
    list ws4redis nor fail."""
    python = fresh_venv(tmp_path, wheel)
    before = subprocess.run(
        [python, "-c", TWISTD, "--help"], capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=False
    )
    assert "ws4redis" in before.stdout  # the cache now knows the plugin
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "uninstall", "--quiet", "--yes", "twisted_ws4redis"],
        check=True,
        cwd=tmp_path,
        env=clean_env(),
    )
    after = subprocess.run(
        [python, "-c", TWISTD, "--help"], capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=False
    )
    assert after.returncode == 0, after.stderr
    assert "ws4redis" not in after.stdout + after.stderr
    assert "web" in after.stdout  # Twisted's own plugins are still listed


def test_twistd_lists_the_plugin_after_the_editable_install():
    listing = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, cwd="/", check=False)
    assert "ws4redis" in listing.stdout


def test_twistd_ws4redis_help_lists_its_options():
    usage = subprocess.run(
        [str(BIN / "twistd"), "ws4redis", "--help"], capture_output=True, text=True, cwd="/", check=False
    )
    assert usage.returncode == 0, usage.stdout + usage.stderr
    for option in OPTIONS:
        assert option in usage.stdout


# -- the programs pip cannot install ---------------------------------------------------------


def test_missing_system_packages_are_named_in_one_line_before_any_test(tmp_path):
    """Where the script can neither find the programs nor apt-get them, it stops
    with one line naming each missing package and the command that installs them."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "id"):
        (tools / tool).symlink_to(
            subprocess.run(["which", tool], capture_output=True, text=True, check=True).stdout.strip()
        )
    result = subprocess.run(
        [str(tools / "bash"), str(ROOT / "tests" / "system_packages.sh")],
        env={"PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for package in ("redis-server", "chromium", "chromium-driver", "nodejs", "npm"):
        assert package in lines[0]
    assert "apt-get install -y" in lines[0]


def test_the_system_packages_of_this_machine_are_all_there():
    """`make test` ran the script before this suite; on this machine it finds everything."""
    result = subprocess.run(
        [str(ROOT / "tests" / "system_packages.sh")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result
    assert result.stdout == result.stderr == "", result
