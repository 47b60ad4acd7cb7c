"""The JavaScript client's folder is an npm package (``twisted-ws4redis``) as
well as the app's static folder, with one ws4redis.js for both: ``npm pack``
holds the client, its ES module, their TypeScript declarations, package.json,
the README and the project's license, at the Python package's version; Node's
require() and import load it through package.json; tsc accepts the right uses
of the declarations and refuses the wrong ones (tests/typescript/), and the
declarations name every option, callback and method the script reads or
defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from twisted_ws4redis import __version__

FOLDER = ROOT / "twisted_ws4redis" / "static" / "twisted_ws4redis" / "js"
SAMPLES = ROOT / "tests" / "typescript"
TYPESCRIPT = "typescript@5.9.3"
NPM_TIMEOUT = 120


def npm(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["npm", "--no-audit", "--no-fund", "--loglevel=error", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[dict, Path]:
    """npm pack's report on the folder and the tarball it made."""
    out = tmp_path_factory.mktemp("npm-pack")
    (report,) = json.loads(npm("pack", "--json", "--pack-destination", str(out), cwd=FOLDER))
    return report, out / report["filename"]


@pytest.fixture(scope="module")
def consumer(packed, tmp_path_factory) -> Path:
    """A project with TypeScript and the packed client installed from the
    tarball, and the samples beside its node_modules."""
    where = tmp_path_factory.mktemp("consumer")
    npm("install", TYPESCRIPT, str(packed[1]), cwd=where)
    for sample in SAMPLES.iterdir():
        shutil.copy(sample, where)
    return where


def tsc(consumer: Path, *args: str) -> subprocess.CompletedProcess:
    common = ["--strict", "--noEmit", "--target", "es2022", "--lib", "es2022,dom", "--types", "twisted-ws4redis"]
    return subprocess.run(
        [str(consumer / "node_modules" / ".bin" / "tsc"), *common, *args],
        cwd=consumer,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )


def test_the_package_holds_the_client_its_types_and_the_license(packed):
    report, _ = packed
    assert {entry["path"] for entry in report["files"]} == {
        "ws4redis.js",
        "ws4redis.mjs",
        "ws4redis.d.ts",
        "ws4redis.d.mts",
        "package.json",
        "README.md",
        "LICENSE",
    }
    assert (report["name"], report["version"]) == ("twisted-ws4redis", __version__)


def test_package_json_names_the_version_license_and_entry_points():
    manifest = json.loads((FOLDER / "package.json").read_text())
    assert manifest["version"] == __version__
    assert manifest["license"] == "MIT"
    assert (manifest["main"], manifest["types"]) == ("ws4redis.js", "ws4redis.d.ts")
    for entry in ("main", "types"):
        assert (FOLDER / manifest[entry]).is_file()


def test_the_packaged_license_is_the_project_license():
    """The npm package needs the file in its folder (npm pack leaves symbolic links out)."""
    assert (FOLDER / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


def test_node_requires_and_imports_the_client(consumer):
    required = subprocess.run(
        ["node", "-e", 'const W = require("twisted-ws4redis"); console.log(typeof W, typeof W.connect)'],
        cwd=consumer,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert required.stdout.split() == ["function", "function"], required.stderr
    imported = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            (
                'import W, {WS4Redis, connect} from "twisted-ws4redis"; '
                "console.log(typeof W, WS4Redis === W, connect === W.connect)"
            ),
        ],
        cwd=consumer,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert imported.stdout.split() == ["function", "true", "true"], imported.stderr


@pytest.mark.parametrize(
    "resolution",
    [("--module", "node16", "--moduleDetection", "legacy"), ("--module", "esnext", "--moduleResolution", "bundler")],
    ids=["node16", "bundler"],
)
def test_the_declarations_type_check_the_right_uses_and_refuse_the_wrong(consumer, resolution):
    """Every @ts-expect-error in the samples must meet an error (with
    declarations that are ``any`` they would all be unused, a failure)."""
    files = ["cjs.ts", "esm.mts", "page.ts"] if "node16" in resolution else ["esm.mts", "page.ts"]
    checked = tsc(consumer, *resolution, *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_wrong_use_fails_the_type_check(consumer):
    checked = tsc(consumer, "--module", "node16", "wrong.ts")
    assert checked.returncode != 0
    assert "wrong.ts(4," in checked.stdout, checked.stdout
    assert "everybody" in checked.stdout, checked.stdout


def test_the_declarations_name_every_option_and_method_of_the_script():
    """What ws4redis.js reads from its options and callbacks, and defines on
    its clients and subscriptions, is declared as a member in ws4redis.d.ts."""
    script = (FOLDER / "ws4redis.js").read_text()
    # An Entry's own members are the client's state; the page gets its handle.
    public = re.sub(r"function Entry\(.*?(?=handle\.unsubscribe = )", "", script, flags=re.DOTALL)
    assert len(public) < len(script)
    declarations = (FOLDER / "ws4redis.d.ts").read_text()
    read = set(re.findall(r"\b(?:options|callbacks)\.(\w+)", script))
    defined = set(re.findall(r"\b(?:this|client|handle|WS4Redis)\.(\w+) =", public))
    presence_events = {"join", "leave"}  # callbacks[event.op]
    names = read | defined | presence_events
    assert {"uri", "binary_type", "receive_message", "error", "recovered", "send_message", "unsubscribe"} <= names
    declared = set(re.findall(r"^\s*(?:readonly )?(\w+)\??[:(]", declarations, re.MULTILINE))
    missing = names - declared
    assert not missing, missing
