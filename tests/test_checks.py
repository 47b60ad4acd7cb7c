"""System checks of the settings: the real ``manage.py check`` (``python -m
django check`` on tests/project) fails on every bad value with its stable id,
the setting's name and the value, warns on an unknown ``WS4REDIS_*`` name with
the closest known one, reports every problem at once; ``twistd ws4redis``
refuses to start with the same messages and logs the warnings."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from conftest import PROJECT, TwistdServer, project_env, twistd_command
from twisted_ws4redis import checks
from twisted_ws4redis.conf import RULES

#: (setting, bad value, the id that reports it, how the message shows the value)
CASES = [
    ("WEBSOCKET_URL", "ws/", "twisted_ws4redis.E001", "'ws/'"),
    ("WEBSOCKET_URL", None, "twisted_ws4redis.E001", "None"),
    ("WS4REDIS_CONNECTION", {"host": "localhost", "port": 70000}, "twisted_ws4redis.E002", "70000"),
    ("WS4REDIS_CONNECTION", {"hostname": "localhost"}, "twisted_ws4redis.E002", "'hostname'"),
    ("WS4REDIS_CONNECTION", {"hots": "localhost"}, "twisted_ws4redis.E002", "'hots': did you mean 'host'?"),
    # Its value may hold a password: the message names the type, not the value.
    (
        "WS4REDIS_CONNECTION",
        "redis://:hunter2@localhost",
        "twisted_ws4redis.E002",
        "got str (a Redis URL is what the server's --redis option takes)",
    ),
    ("WS4REDIS_PREFIX", 3, "twisted_ws4redis.E003", "3"),
    ("WS4REDIS_EXPIRE", "soon", "twisted_ws4redis.E004", "'soon'"),
    ("WS4REDIS_EXPIRE", True, "twisted_ws4redis.E004", "True"),
    ("WS4REDIS_SUBSCRIBER", "testproject.hooks.nothing", "twisted_ws4redis.E005", "'testproject.hooks.nothing'"),
    (
        "WS4REDIS_SUBSCRIBER",
        "testproject.hooks.allowed_channels",
        "twisted_ws4redis.E005",
        "'testproject.hooks.allowed_channels'",
    ),
    ("WS4REDIS_HEARTBEAT", "", "twisted_ws4redis.E006", "''"),
    ("WS4REDIS_HEARTBEAT", 5, "twisted_ws4redis.E006", "5"),
    (
        "WS4REDIS_ALLOWED_CHANNELS",
        "testproject.hooks.allowed_channelz",
        "twisted_ws4redis.E007",
        "'testproject.hooks.allowed_channelz'",
    ),
    ("WS4REDIS_ALLOWED_CHANNELS", 42, "twisted_ws4redis.E007", "42"),
    (
        "WS4REDIS_ALLOWED_CHANNELS",
        "testproject.settings.DEBUG",
        "twisted_ws4redis.E007",
        "'testproject.settings.DEBUG' is not a callable",
    ),
    ("WS4REDIS_PROCESS_REQUEST", "nowhere.at.all", "twisted_ws4redis.E008", "'nowhere.at.all'"),
    ("WS4REDIS_PROCESS_REQUEST", "testproject.hooks.\x1b[2J", "twisted_ws4redis.E008", r"'testproject.hooks.\x1b[2J'"),
    ("WS4REDIS_MAX_MESSAGE_SIZE", 0, "twisted_ws4redis.E009", "got 0"),
    ("WS4REDIS_ALLOWED_ORIGINS", "https://example.com", "twisted_ws4redis.E010", "'https://example.com'"),
    ("WS4REDIS_ALLOWED_ORIGINS", [None], "twisted_ws4redis.E010", "[None]"),
    # Control characters are escaped, not written to the terminal.
    ("WS4REDIS_FACILITY_PATTERN", "[unclosed\x1b[31m", "twisted_ws4redis.E011", r"'[unclosed\x1b[31m'"),
    ("WS4REDIS_HANDSHAKE_TIMEOUT", None, "twisted_ws4redis.E012", "None"),
    ("WS4REDIS_MAX_HEADER_SIZE", 1.5, "twisted_ws4redis.E013", "1.5"),
    ("WS4REDIS_MAX_PUBLISH_RATE", -1, "twisted_ws4redis.E014", "-1"),
    ("WS4REDIS_MAX_BUFFERED_BYTES", "4M", "twisted_ws4redis.E015", "'4M'"),
    ("WS4REDIS_AUTO_PING_INTERVAL", 0, "twisted_ws4redis.E016", "got 0"),
    ("WS4REDIS_AUTO_PING_TIMEOUT", "30", "twisted_ws4redis.E017", "'30'"),
    ("WS4REDIS_MAX_BODY_SIZE", None, "twisted_ws4redis.E018", "None"),
    ("WS4REDIS_BODY_TIMEOUT", 0, "twisted_ws4redis.E019", "got 0"),
    ("WS4REDIS_BODY_MIN_RATE", "500", "twisted_ws4redis.E020", "'500'"),
    ("WS4REDIS_MAX_CONNECTIONS", 0, "twisted_ws4redis.E021", "got 0"),
    ("WS4REDIS_RESERVED_DESCRIPTORS", -5, "twisted_ws4redis.E022", "-5"),
    # What only OpenSSL knows: the server start found it, the check finds it too.
    ("WS4REDIS_TLS_CIPHERS", "NO-SUCH-CIPHER", "twisted_ws4redis.E023", "'NO-SUCH-CIPHER'"),
    ("WS4REDIS_TLS_CIPHERS", "!ALL", "twisted_ws4redis.E023", "'!ALL'"),
    ("WS4REDIS_TLS_CIPHERS", "", "twisted_ws4redis.E023", "''"),
    ("WS4REDIS_MAX_FRAME_RATE", "1000", "twisted_ws4redis.E024", "'1000'"),
    ("WS4REDIS_MAX_FRAGMENTS", 2.5, "twisted_ws4redis.E025", "2.5"),
    ("WS4REDIS_HISTORY_SIZE", -1, "twisted_ws4redis.E026", "-1"),
    ("WS4REDIS_HISTORY_TTL", 0, "twisted_ws4redis.E027", "got 0"),
    ("WS4REDIS_MAX_SUBSCRIPTIONS", "100", "twisted_ws4redis.E028", "'100'"),
    ("WS4REDIS_PRESENCE", 1, "twisted_ws4redis.E029", "got 1"),
    ("WS4REDIS_PRESENCE_TTL", 2.5, "twisted_ws4redis.E030", "2.5"),
    ("WS4REDIS_MESSAGE_SIGNAL", "yes", "twisted_ws4redis.E031", "'yes'"),
    ("WS4REDIS_TOKEN_MAX_AGE", 0, "twisted_ws4redis.E032", "got 0"),
    ("WS4REDIS_CLUSTER_PLAIN_PUBLISH", "yes", "twisted_ws4redis.E033", "'yes'"),
    ("WS4REDIS_HEALTH_URL", "health", "twisted_ws4redis.E034", "'health'"),
    ("WS4REDIS_HEALTH_URL", "/health?x=1", "twisted_ws4redis.E034", "'/health?x=1'"),
    ("WS4REDIS_METRICS_FACILITIES", ["chat-("], "twisted_ws4redis.E035", "'chat-('"),
    ("WS4REDIS_METRICS_FACILITIES", "chat-.*", "twisted_ws4redis.E035", "'chat-.*'"),
]

#: Checks and a start-up open no database: none is migrated for them.
NO_DATABASE = "/nonexistent/unused.sqlite3"

#: ``?: (twisted_ws4redis.E001) message`` and, on the next line, ``HINT: hint``
#: (manage.py check), or both on one line (twistd).
PROBLEM = re.compile(r"\((twisted_ws4redis\.[EW]\d{3})\) (.*?)(?:\n?\s*HINT: (.*))?$", re.MULTILINE)

#: ws4redis' context processor, left in TEMPLATES after a migration.
LEFT_BEHIND_TEMPLATES = {
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [checks.WS4REDIS_CONTEXT_PROCESSOR]},
}


@dataclass
class Check:
    returncode: int
    output: str

    def problems(self, level: str) -> list[tuple[str, str, str | None]]:
        """(id, message, hint) of the twisted_ws4redis problems under ``ERRORS:`` or ``WARNINGS:``."""
        sections = re.split(r"^(ERRORS|WARNINGS):$", self.output, flags=re.MULTILINE)
        texts = [text for name, text in zip(sections[1::2], sections[2::2], strict=True) if name == level]
        return [match.groups() for text in texts for match in PROBLEM.finditer(text)]


def django_check(overrides: dict) -> Check:
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        env=project_env(NO_DATABASE, overrides),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Check(result.returncode, result.stdout + result.stderr)


def rounds() -> list[dict]:
    """The cases in as few settings files as can hold them (one value per setting each)."""
    grouped: list[dict] = []
    for name, value, _, _ in CASES:
        free = next((overrides for overrides in grouped if name not in overrides), None)
        if free is None:
            grouped.append(free := {})
        free[name] = value
    return grouped


@pytest.fixture(scope="module")
def checked() -> dict[str, Check]:
    """``manage.py check`` on each round of CASES and on the other configurations
    these tests need, run side by side."""
    runs = {f"round{index}": overrides for index, overrides in enumerate(rounds())}
    runs.update(
        clean={},
        typos={"WS4REDIS_EXPIR": 60, "WS4REDIS_ZZQQ": 1},
        two={"WS4REDIS_EXPIRE": "soon", "WEBSOCKET_URL": "ws"},
        health_under={"WS4REDIS_HEALTH_URL": "/ws/health"},
        health_shadow={"WS4REDIS_HEALTH_URL": "/slow/"},
        health_beside={"WS4REDIS_HEALTH_URL": "/ws4redis/health", "WS4REDIS_METRICS_FACILITIES": ["chat-.*", "news"]},
        leftovers={"WSGI_APPLICATION": checks.WS4REDIS_RUNSERVER, "TEMPLATES": [LEFT_BEHIND_TEMPLATES]},
    )
    with ThreadPoolExecutor(len(runs)) as pool:
        return dict(zip(runs, pool.map(django_check, runs.values()), strict=True))


def round_of(name: str, value) -> str:
    return next(
        f"round{index}"
        for index, overrides in enumerate(rounds())
        if name in overrides and overrides[name] == value and type(overrides[name]) is type(value)
    )


@pytest.mark.parametrize(("name", "value", "check_id", "shown"), CASES, ids=[f"{n}={v!r}" for n, v, _, _ in CASES])
def test_a_bad_value_fails_the_check_with_its_id_name_and_value(checked, name, value, check_id, shown):
    check = checked[round_of(name, value)]
    assert check.returncode != 0, check.output
    mine = [(message, hint) for found_id, message, hint in check.problems("ERRORS") if found_id == check_id]
    assert len(mine) == 1, check.output
    message, _ = mine[0]
    assert name in message, message
    assert shown in message, message
    assert "hunter2" not in check.output
    assert "\x1b" not in check.output


def test_every_setting_is_among_the_cases():
    assert {name for name, _, _, _ in CASES} == set(RULES)
    assert {(name, check_id) for name, _, check_id, _ in CASES} == {
        (name, rule.check_id) for name, rule in RULES.items()
    }


def test_a_typo_warns_with_the_closest_name_and_passes(checked):
    check = checked["typos"]
    assert check.returncode == 0, check.output
    warnings = {message.split()[0]: (check_id, hint) for check_id, message, hint in check.problems("WARNINGS")}
    assert warnings["WS4REDIS_EXPIR"] == ("twisted_ws4redis.W001", "Did you mean WS4REDIS_EXPIRE?")
    check_id, hint = warnings["WS4REDIS_ZZQQ"]
    assert check_id == "twisted_ws4redis.W001"
    assert "Did you mean" not in hint
    assert check.problems("ERRORS") == []


def test_two_bad_settings_are_reported_at_once(checked):
    check = checked["two"]
    assert check.returncode != 0
    found = [(check_id, message.split()[0]) for check_id, message, _ in check.problems("ERRORS")]
    assert sorted(found) == [("twisted_ws4redis.E001", "WEBSOCKET_URL"), ("twisted_ws4redis.E004", "WS4REDIS_EXPIRE")]


def test_the_health_url_may_not_lie_under_websocket_url(checked):
    """A facility could be called "health": the check would answer for it."""
    check = checked["health_under"]
    assert check.returncode != 0
    [(check_id, message, _)] = check.problems("ERRORS")
    assert check_id == "twisted_ws4redis.E034"
    assert "'/ws/health' lies under WEBSOCKET_URL '/ws/'" in message
    assert checked["health_beside"].returncode == 0, checked["health_beside"].output
    assert "W012" not in checked["health_beside"].output


def test_a_health_url_that_a_view_also_has_warns(checked):
    """The server answers the health path before Django: that view would never run."""
    check = checked["health_shadow"]
    assert check.returncode == 0, check.output
    [(check_id, message, hint)] = check.problems("WARNINGS")
    assert check_id == "twisted_ws4redis.W012"
    assert "'/slow/' is also a URL of the project (view testproject.views.slow)" in message
    assert "'/ws4redis/health'" in hint


def test_what_a_ws4redis_migration_left_behind_warns(checked):
    check = checked["leftovers"]
    assert check.returncode == 0, check.output
    found = sorted(
        (check_id, message.split()[0], hint.split()[0]) for check_id, message, hint in check.problems("WARNINGS")
    )
    assert found == [
        ("twisted_ws4redis.W011", "TEMPLATES", "Replace"),
        ("twisted_ws4redis.W011", "WSGI_APPLICATION", "Point"),
    ]
    assert "'twisted_ws4redis.context_processors.default'" in check.output


def test_a_clean_project_has_no_issue(checked):
    check = checked["clean"]
    assert check.returncode == 0, check.output
    assert "twisted_ws4redis" not in check.output


# -- twistd ws4redis runs the same checks --------------------------------------------------


def test_twistd_refuses_to_start_with_the_same_messages(checked):
    overrides = {"WS4REDIS_EXPIRE": "soon", "WEBSOCKET_URL": "ws", "WS4REDIS_EXPIR": 60}
    command = twistd_command()
    result = subprocess.run(
        command,
        env=project_env(NO_DATABASE, overrides),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    said = {(check_id, message, hint) for check_id, message, hint in PROBLEM.findall(output)}
    expected = set(checked["two"].problems("ERRORS")) | {
        problem for problem in checked["typos"].problems("WARNINGS") if problem[1].startswith("WS4REDIS_EXPIR ")
    }
    assert said == expected, output
    assert len(said) == 3, output


def log_once_serving(server: TwistdServer) -> str:
    """The server's log once it has logged that it serves (the log may lag the listening port)."""
    deadline = time.monotonic() + 10
    while "Serving websockets" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return server.log()


def test_twistd_logs_a_typo_and_serves(redis_server):
    server = TwistdServer(redis_server.url, NO_DATABASE, {"WS4REDIS_EXPIR": 60})
    try:
        log = log_once_serving(server)
        lines = [line for line in log.splitlines() if "twisted_ws4redis.W001" in line]
        assert len(lines) == 1, log
        assert "WS4REDIS_EXPIR is not" in lines[0], log
        assert "Did you mean WS4REDIS_EXPIRE?" in lines[0]
    finally:
        server.stop()  # maybe before twistd handles SIGTERM: its exit code is test_cli's concern


def test_twistd_honours_silenced_checks(redis_server):
    server = TwistdServer(
        redis_server.url, NO_DATABASE, {"WS4REDIS_EXPIR": 60, "SILENCED_SYSTEM_CHECKS": ["twisted_ws4redis.W001"]}
    )
    try:
        assert "W001" not in log_once_serving(server)
    finally:
        server.stop()
