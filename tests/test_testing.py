"""twisted_ws4redis.testing, as a project's tests use it: the base class under
Django's test runner (tests/project's live_tests.py, the example project's own
tests in a ``manage.py test`` subprocess) and the pytest fixture."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from websockets.exceptions import InvalidStatus

from conftest import PROJECT, ROOT, project_env, unique
from twisted_ws4redis.testing import LiveServer, ws4redis_live_server  # noqa: F401  (the fixture)


@pytest.fixture
def live(django_in_process, ws4redis_live_server) -> LiveServer:  # noqa: F811 (the imported fixture, by name)
    return ws4redis_live_server


def run_django_tests(program: list[str], label: str, cwd, env: dict) -> str:
    """``program test label -v 2`` in a subprocess; its output once it passed."""
    result = subprocess.run(
        [sys.executable, *program, "test", label, "-v", "2"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Ran (\d+) tests? in .*\n\nOK$", result.stderr, re.MULTILINE), result.stderr
    return result.stderr


def test_the_example_projects_tests_pass_under_manage_py_test():
    # As a shell runs it: not with the test project that django_in_process set up here.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DJANGO_SETTINGS_MODULE", "TEST_DB", "WS4REDIS_TEST_OVERRIDES")
    }
    output = run_django_tests(["manage.py"], "chatserver", ROOT / "examples" / "chatserver", env)
    assert int(re.search(r"^Ran (\d+) tests", output, re.MULTILINE).group(1)) >= 1, output
    assert "test_user_chat_reaches_the_addressee_only (chatserver.tests.ChatTests" in output, output


def test_the_base_class_under_djangos_runner_with_an_in_memory_database(tmp_path):
    # The test database: tests/project's file name, so an in-memory one (the
    # case where the server shares the test thread's connection).
    output = run_django_tests(
        ["-m", "django"], "testproject.live_tests", PROJECT, project_env(str(tmp_path / "unused.sqlite3"))
    )
    assert "('file:memorydb_default?mode=memory&cache=shared')" in output, output
    assert re.search(r"^Ran 5 tests", output, re.MULTILINE), output


def test_a_logged_in_users_websocket_receives_their_messages_only(live):
    from django.contrib.auth.models import User

    facility = unique("fixture")
    with (
        live.connect(facility, "subscribe-user", user=User.objects.get(username="john")) as johns,
        live.connect(facility, "subscribe-user", user=User.objects.get(username="mary")) as marys,
    ):
        assert live.publish("for john", facility=facility, users=["john"]) == 1
        assert johns.receive() == "for john"
        with pytest.raises(AssertionError, match=f"no message on ws://127.0.0.1:{live.port}/ws/{facility}"):
            marys.receive(timeout=0.3)


def test_a_message_published_right_after_connect_arrives(live):
    """connect() returns once the server has subscribed: nothing is lost."""
    facility = unique("race")
    for number in range(20):
        with live.connect(facility, "subscribe-broadcast") as client:
            live.publish(f"message {number}", facility=facility, broadcast=True)
            assert client.receive() == f"message {number}"


def test_wait_for_names_what_came_instead(live):
    facility = unique("other")
    with live.connect(facility, "subscribe-broadcast") as client:
        live.publish("not this one", facility=facility, broadcast=True)
        with pytest.raises(AssertionError, match=r"'awaited' did not arrive .* received \['not this one'\]"):
            client.wait_for("awaited", timeout=0.5)


def test_a_refused_handshake_raises_with_its_status(live):
    with pytest.raises(InvalidStatus) as refused:
        live.connect("no:colons", "subscribe-broadcast")
    assert refused.value.response.status_code == 400


def test_the_publisher_goes_back_to_its_redis_after_the_server_stops(django_in_process, redis_server):
    from twisted_ws4redis import conf

    before = conf.redis_address()
    with LiveServer() as server:
        assert conf.redis_address().unix_socket_path == server.redis.socket_path
    assert conf.redis_address() == before
    assert before.port == redis_server.port


def test_a_publishing_websocket_reaches_a_subscribed_one(live):
    facility = unique("send")
    with live.connect(facility, "subscribe-broadcast") as reader, live.connect(facility, "publish-broadcast") as writer:
        writer.send("from a browser")
        assert reader.receive() == "from a browser"


def test_a_live_server_on_a_redis_of_ones_own(django_in_process, redis_client, redis_server):
    facility = unique("own")
    with LiveServer(redis_url=redis_server.url) as server:
        assert server.redis is None  # no private redis-server started
        with server.connect(facility, "subscribe-broadcast") as client:
            assert redis_client.publish(f"broadcast:{facility}", "through my Redis") == 1
            assert client.receive() == "through my Redis"


def test_a_live_server_serves_its_own_host_whatever_allowed_hosts_says(django_in_process):
    """A fresh project's ALLOWED_HOSTS does not list 127.0.0.1 (DEBUG off: it is
    empty): the server adds its own host while it runs, as LiveServerTestCase does."""
    import urllib.request

    from django.conf import settings
    from django.test import override_settings

    with override_settings(ALLOWED_HOSTS=[]):
        with LiveServer() as server:
            with urllib.request.urlopen(server.url + "/", timeout=10) as page:
                assert page.status == 200
            with server.connect(unique("hosts"), "subscribe-broadcast") as ws:
                assert ws.connection.response.status_code == 101
        assert settings.ALLOWED_HOSTS == []
