"""Token authentication (twisted_ws4redis.auth), end to end: real twistd
processes serving the test project with each token hook, real websocket
clients without cookies. A good token opens its user's channels, with the
groups the database holds now; every bad one gets the same 403; a request
without a token still authenticates by its cookie; no token reaches the log."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import (
    PROJECT,
    TwistdServer,
    http_post_json,
    login,
    project_env,
    round_trip,
    session_key,
    unique,
    wait_subscribed,
    warm_up,
)
from test_door import raw_request
from twisted_ws4redis import auth, logsafe
from twisted_ws4redis.audience import session_digest

SETTINGS = "testproject.settings_tokens"
TIMEOUT = 5
HOOKS = {
    "signed": "twisted_ws4redis.auth.process_request",
    "drf": "twisted_ws4redis.auth.process_request_drf_token",
    "jwt": "twisted_ws4redis.auth.process_request_simplejwt",
}


def token_env(db_path: str, overrides: dict | None = None) -> dict:
    return dict(project_env(db_path, overrides), DJANGO_SETTINGS_MODULE=SETTINGS)


@pytest.fixture(scope="module")
def token_db(tmp_path_factory) -> str:
    """A database of its own: the token settings add rest_framework.authtoken's table."""
    path = str(tmp_path_factory.mktemp("tokens") / "db.sqlite3")
    for command in (["migrate", "--noinput", "-v0"], ["seed_users"]):
        subprocess.run([sys.executable, "-m", "django", *command], env=token_env(path), check=True, cwd=PROJECT)
    return path


@pytest.fixture(scope="module")
def servers(redis_server, token_db):
    """``servers(hook)``: a server whose WS4REDIS_PROCESS_REQUEST is ``HOOKS[hook]``."""
    running: dict[str, TwistdServer] = {}

    def get(hook: str) -> TwistdServer:
        if hook not in running:
            # A publish rate of 1/s lets the log test cause a WSPOLICY line.
            overrides = {"WS4REDIS_PROCESS_REQUEST": HOOKS[hook], "WS4REDIS_MAX_PUBLISH_RATE": 1}
            running[hook] = TwistdServer(
                redis_server.url, token_db, settings=SETTINGS, env=token_env(token_db, overrides)
            )
            warm_up(running[hook])
        return running[hook]

    yield get
    for server in running.values():
        server.stop()


def new_user(server: TwistdServer, groups: list[str] = ()) -> str:
    name = unique("tok")
    http_post_json(server, "/tokens/user/", {"username": name, "create": True, "groups": list(groups)})
    return name


def change_user(server: TwistdServer, username: str, **spec) -> None:
    http_post_json(server, "/tokens/user/", {"username": username, **spec})


def token(server: TwistdServer, username: str, kind: str = "signed", max_age: int | None = None) -> str:
    return http_post_json(server, "/tokens/make/", {"username": username, "kind": kind, "max_age": max_age})["token"]


def open_with(
    server: TwistdServer,
    path: str,
    query_token: str | None = None,
    header: str | None = None,
    cookie: str | None = None,
    close_timeout: float = 10,
):
    """A websocket on ``path``, the token in the query string or as the Authorization header."""
    if query_token is not None:
        path += f"&token={query_token}" if "?" in path else f"?token={query_token}"
    headers = {name: value for name, value in (("Authorization", header), ("Cookie", cookie)) if value}
    return connect(
        server.ws_url(path), additional_headers=headers or None, open_timeout=TIMEOUT, close_timeout=close_timeout
    )


def refusal(server: TwistdServer, path: str, **credentials) -> tuple[int, bytes]:
    """The status and body of a refused handshake."""
    with pytest.raises(InvalidStatus) as refused:
        open_with(server, path, **credentials).close()
    return refused.value.response.status_code, bytes(refused.value.response.body)


def log_line(server: TwistdServer, *parts: str) -> str:
    """The first line of the server's log that holds every one of ``parts``, once it is written."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if all(part in line for part in parts):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line with {parts}")


def wsconnect_line(server: TwistdServer, facility: str) -> str:
    """The WSCONNECT line of the one websocket opened on ``facility``."""
    return log_line(server, "WSCONNECT", f"/ws/{facility}?")


def receive(ws, payload: bytes) -> None:
    assert ws.recv(timeout=TIMEOUT) == payload.decode()


# -- signed tokens (auth.make_token) ------------------------------------------------------


@pytest.mark.parametrize("where", ["query", "header"])
def test_a_signed_token_opens_the_users_channels_with_the_groups_of_now(servers, redis_client, where):
    server = servers("signed")
    name = new_user(server, groups=["chatusers"])
    secret = token(server, name)
    # Groups changed after the token was made: the socket gets the new ones.
    group = unique("grp")
    change_user(server, name, groups=[group])
    facility = unique("signed")
    credentials = {"query_token": secret} if where == "query" else {"header": f"Bearer {secret}"}
    with open_with(server, f"{facility}?subscribe-user&subscribe-group&subscribe-session", **credentials) as ws:
        # No cookie, no session: no session channel; the user's and the group's of now.
        assert f"subscribe=['group:{group}:{facility}', 'user:{name}:{facility}'] publish=[]" in (
            wsconnect_line(server, facility)
        )
        wait_subscribed(redis_client, f"group:{group}:{facility}")
        redis_client.publish(f"user:{name}:{facility}", b"to the user")
        receive(ws, b"to the user")
        redis_client.publish(f"group:{group}:{facility}", b"to the group")
        receive(ws, b"to the group")


def test_an_expired_token_is_refused(servers):
    server = servers("signed")
    name = new_user(server)
    made = time.monotonic()
    secret = token(server, name, max_age=1)
    with open_with(server, f"{unique('exp')}?subscribe-user", query_token=secret) as ws:
        round_trip(ws)
    time.sleep(max(0.0, made + 2.1 - time.monotonic()))  # at most max_age + 1 s: its expiry is a whole second
    assert refusal(server, f"{unique('exp')}?subscribe-user", query_token=secret)[0] == 403


def _swap_signature(first: str, second: str) -> str:
    """``first``'s payload with ``second``'s signature."""
    return first.rsplit(":", 1)[0] + ":" + second.rsplit(":", 1)[1]


def test_every_bad_token_gets_the_same_403(servers):
    server = servers("signed")
    facility = unique("bad")
    path = f"{facility}?subscribe-user"
    good = token(server, "john")
    inactive, deleted, changed = new_user(server), new_user(server), new_user(server)
    tokens = {name: token(server, name) for name in (inactive, deleted, changed)}
    for name in (inactive, deleted, changed):  # each worked before its user changed
        with open_with(server, path, query_token=tokens[name]) as ws:
            round_trip(ws)
    change_user(server, inactive, is_active=False)
    change_user(server, deleted, delete=True)
    change_user(server, changed, password="another secret")
    bad = {
        "tampered": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "another user's payload": _swap_signature(token(server, "mary"), good),
        "wrong salt": token(server, "john", kind="wrong-salt"),
        "a DRF token on this hook": token(server, "john", kind="drf"),
        "garbage": "not-a-token",
        "empty": "",
        "inactive user": tokens[inactive],
        "deleted user": tokens[deleted],
        "password changed": tokens[changed],
    }
    bodies = set()
    for case, secret in bad.items():
        status, body = refusal(server, path, query_token=secret)
        assert status == 403, case
        bodies.add(body)
    status, body = refusal(server, path, header=f"Token {good[:-1]}")
    assert status == 403
    bodies.add(body)
    # One reason for all, which tells nothing of why.
    assert bodies == {f"{auth.REFUSED}\n".encode()}
    with open_with(server, path, query_token=good) as ws:
        round_trip(ws)


def test_without_a_token_the_session_cookie_still_authenticates(servers, redis_client):
    server = servers("signed")
    cookie = login(server, "john")
    facility = unique("cookie")
    # Another scheme's Authorization header is not a token: the cookie decides.
    with open_with(server, f"{facility}?subscribe-user&subscribe-session", cookie=cookie, header="Basic am9objp4"):
        line = wsconnect_line(server, facility)
        digest = session_digest(session_key(cookie))
        assert f"subscribe=['user:john:{facility}', 'session:{digest}:{facility}']" in line
    # Neither: anonymous, as without the hook.
    anonymous = unique("anon")
    with open_with(server, f"{anonymous}?subscribe-user&subscribe-broadcast"):
        assert f"subscribe=['broadcast:{anonymous}']" in wsconnect_line(server, anonymous)


# -- Django REST framework's Token and simplejwt ---------------------------------------------


@pytest.mark.parametrize(("hook", "kind", "scheme"), [("drf", "drf", "Token"), ("jwt", "jwt-access", "Bearer")])
def test_drf_and_simplejwt_tokens_open_the_users_channels(servers, redis_client, hook, kind, scheme):
    server = servers(hook)
    name = new_user(server, groups=["staff"])
    secret = token(server, name, kind=kind)
    for credentials in ({"query_token": secret}, {"header": f"{scheme} {secret}"}):
        facility = unique(hook)
        with open_with(server, f"{facility}?subscribe-user&subscribe-group", **credentials) as ws:
            assert f"subscribe=['group:staff:{facility}', 'user:{name}:{facility}']" in (
                wsconnect_line(server, facility)
            )
            wait_subscribed(redis_client, f"user:{name}:{facility}")
            redis_client.publish(f"user:{name}:{facility}", b"hello")
            receive(ws, b"hello")
    change_user(server, name, is_active=False)
    assert refusal(server, f"{unique(hook)}?subscribe-user", query_token=secret) == (403, f"{auth.REFUSED}\n".encode())


@pytest.mark.parametrize(
    ("hook", "bad"),
    [
        ("drf", "a made-up key"),
        ("drf", "signed"),
        ("jwt", "jwt-refresh"),
        ("jwt", "jwt-expired"),
        ("jwt", "tampered"),
        ("jwt", "signed"),
    ],
)
def test_drf_and_simplejwt_refuse_what_is_not_a_valid_token_of_theirs(servers, hook, bad):
    server = servers(hook)
    if bad == "a made-up key":
        secret = "0" * 40
    elif bad == "tampered":
        secret = token(server, "john", kind="jwt-access")
        secret = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")
    else:
        secret = token(server, "john", kind=bad)
    status, body = refusal(server, f"{unique(hook)}?subscribe-user", query_token=secret)
    assert (status, body) == (403, f"{auth.REFUSED}\n".encode())


def test_the_drf_hook_without_its_app_says_so(twistd_servers, redis_client):
    """The main test project has no rest_framework.authtoken: a token handshake
    fails (500) with a log line naming what is missing; one without a token
    still goes by its cookie."""
    server = twistd_servers({"WS4REDIS_PROCESS_REQUEST": HOOKS["drf"]})
    assert refusal(server, f"{unique('drf')}?subscribe-user", query_token="0" * 40)[0] == 500
    log_line(
        server, "ImproperlyConfigured: process_request_drf_token needs 'rest_framework.authtoken' in INSTALLED_APPS"
    )
    facility = unique("drf-cookie")
    with open_with(server, f"{facility}?subscribe-user", cookie=login(server, "ann")):
        assert f"subscribe=['user:ann:{facility}']" in wsconnect_line(server, facility)


# -- no token in the log ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/ws/a?subscribe-user&token=s3cret", "/ws/a?subscribe-user&token=[redacted]"),
        # as a query parser reads the names: percent- and plus-decoded; and in any case
        (
            "/ws/a?%74oken=s3cret&TOKEN=s3cret&access_token=s3cret&+token=s3cret",
            "/ws/a?%74oken=[redacted]&TOKEN=[redacted]&access_token=[redacted]&+token=[redacted]",
        ),
        ("/ws/a?token=s3cret;more&x=1", "/ws/a?token=[redacted]&x=1"),
        ("/ws/a?tokens=1&my_token=2&token", "/ws/a?tokens=1&my_token=2&token"),  # other names; no value
        ("/ws/token=1", "/ws/token=1"),  # no query
        (b"https://a.example/?token=s\xffcret", b"https://a.example/?token=[redacted]"),
    ],
)
def test_redact_query(target, shown):
    assert logsafe.redact_query(target) == shown


def test_no_token_reaches_the_log(servers, redis_client):
    server = servers("signed")
    valid, invalid = token(server, "mary"), token(server, "mary")[:-1] + "x"
    facility = unique("secret")
    opened, flooded = f"{facility}?subscribe-user", f"{facility}?subscribe-user&publish-broadcast"
    with open_with(server, opened, query_token=valid) as ws:  # WSCONNECT, WSDISCONNECT
        round_trip(ws)
    # Closed for publishing too fast (WSPOLICY); the server reads nothing more from it.
    with open_with(server, flooded, query_token=valid, close_timeout=0.2) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(5):
                ws.send("flood")
            while True:
                ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd.code == 1008
    # Refused by the hook (403), and before it for a bad origin and a bad facility.
    assert refusal(server, opened, query_token=invalid)[0] == 403
    with pytest.raises(InvalidStatus):
        connect(
            server.ws_url(f"{facility}?token={valid}"), origin="https://elsewhere.example", open_timeout=TIMEOUT
        ).close()
    assert refusal(server, "bad*facility?subscribe-user", query_token=valid)[0] == 400
    # Plain HTTP: the door without an upgrade (Autobahn's 426), and answered by
    # twisted.web (its access log): the door refusing HTTP/1.0, a Django page;
    # a token in the query and in the Referer.
    for path, version, status in (
        (f"/ws/{facility}?token={valid}", "1.1", 426),
        (f"/ws/{facility}?token={valid}", "1.0", 400),
        (f"/?TOKEN={valid}&access_token={valid}", "1.1", 200),
    ):
        assert (
            raw_request(
                server.port,
                (
                    f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Referer: https://a.example/?token={valid}\r\n\r\n"
                ).encode(),
            )[0]
            == status
        )

    # Every line is written (each found redacted), then no secret is anywhere in the log.
    for event, path in (("WSCONNECT", opened), ("WSDISCONNECT", opened), ("WSPOLICY", flooded)):
        log_line(server, f"{event} /ws/{path}&token=[redacted] ")
    log_line(server, f"WSREJECT /ws/{opened}&token=[redacted] ", " 403 ")
    log_line(server, f"WSREJECT /ws/{facility}?token=[redacted] ", " 403 This origin ")
    log_line(server, "WSREJECT /ws/bad*facility?subscribe-user&token=[redacted] ", " 400 ")
    log_line(server, f"WSREJECT /ws/{facility}?token=[redacted] ", " 426 ")
    log_line(server, f'"GET /ws/{facility}?token=[redacted] HTTP/1.0" 400')
    log_line(
        server, '"GET /?TOKEN=[redacted]&access_token=[redacted] HTTP/1.1" 200', '"https://a.example/?token=[redacted]"'
    )
    log = server.log()
    for secret in (valid, invalid, valid.rsplit(":", 1)[1], invalid.rsplit(":", 1)[1]):
        assert secret not in log
