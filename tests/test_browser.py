"""The example chat project and ws4redis.js in a real headless Chromium,
against a real ``twistd ws4redis`` serving examples/chatserver on a real Redis.

Screenshots of the pages land in test-artifacts/ (not committed)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from conftest import ROOT, TwistdServer, recording, round_trip, unique, wait_subscribed
from twisted_ws4redis import history

EXAMPLE = ROOT / "examples" / "chatserver"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the networking flags Chromium keeps calling home, which this network refuses.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,760",
)
WELCOME = "Hello everybody"
HEARTBEAT = "--heartbeat--"
#: What the broadcast chat shows when its client says recovered(false).
NOT_RECOVERED = "Messages sent while you were away could not all be recovered"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory, redis_server) -> dict:
    """The example project's environment: its own database with the demo users
    and its static files collected, as ``make demo`` prepares them."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("The browser tests need Chromium and its driver: apt-get install chromium chromium-driver")
    work = tmp_path_factory.mktemp("chatserver")
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="chatserver.settings",
        CHATSERVER_DB=str(work / "db.sqlite3"),
        CHATSERVER_STATIC_ROOT=str(work / "static"),
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    for command in (
        ["migrate", "--noinput", "-v0"],
        ["loaddata", "-v0", "demo_users"],
        ["collectstatic", "--noinput", "-v0"],
    ):
        subprocess.run([sys.executable, "manage.py", *command], env=env, cwd=EXAMPLE, check=True)
    return env


def start_example(redis_server, env: dict, port: int | None = None) -> TwistdServer:
    return TwistdServer(
        redis_server.url, "", args=("--static",), port=port, project=EXAMPLE, settings="chatserver.settings", env=env
    )


@pytest.fixture(scope="module")
def chat_server(redis_server, example_env):
    server = start_example(redis_server, example_env)
    yield server
    server.stop()


@pytest.fixture
def open_browser(tmp_path):
    """``open_browser()``: a new headless Chromium with its own profile. Its
    profile and the files Chromium leaves in TMPDIR go into ``tmp_path``."""
    drivers = []

    def start() -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile-{len(drivers)}'}")
        # The performance log carries the websocket frames (DevTools Network events).
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        service = Service(CHROMEDRIVER, env=dict(os.environ, TMPDIR=str(tmp_path)))
        driver = webdriver.Chrome(service=service, options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def wait_until(condition, timeout: float = 10.0, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except JavascriptException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.1)


def messages(driver) -> list[str]:
    return [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#messages .text")]


def wait_connected(driver, timeout: float = 10.0) -> None:
    wait_until(
        lambda: driver.execute_script("return window.chatClient && window.chatClient.is_connected()"),
        timeout,
        "the page's websocket to open",
    )


def sign_in(driver, server: TwistdServer, username: str, page: str) -> None:
    driver.get(server.http_url(f"/accounts/login/?next={page}"))
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys("secret")
    driver.find_element(By.CSS_SELECTOR, ".login button").click()
    wait_until(lambda: driver.current_url.endswith(page), message=f"{username} to land on {page}")
    wait_connected(driver)


def send(driver, text: str) -> None:
    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#send button").click()


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def frames(driver) -> dict[str, list[str]]:
    """Payloads of the websocket frames DevTools saw since the last call, by
    direction ('sent', 'received')."""
    seen = {"sent": [], "received": []}
    events = {"Network.webSocketFrameSent": "sent", "Network.webSocketFrameReceived": "received"}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in events:
            seen[events[message["method"]]].append(message["params"]["response"]["payloadData"])
    return seen


#: RedisPublisher as the example's own code calls it, in a process of its own
#: (the server may be down): argv[1] is [Redis port, [[facility, audience, message], ...]].
PUBLISH_AS_THE_EXAMPLE = """
import json, sys
import django
django.setup()
from twisted_ws4redis.conf import set_redis_override
from twisted_ws4redis.publisher import RedisPublisher
from twisted_ws4redis.redis_address import RedisAddress
from twisted_ws4redis.redis_store import RedisMessage
port, items = json.loads(sys.argv[1])
set_redis_override(RedisAddress(host="127.0.0.1", port=port))
for facility, audience, message in items:
    RedisPublisher(facility=facility, **audience).publish_message(RedisMessage(message))
"""


def publish_as_the_example(redis_server, env: dict, items: list[tuple[str, dict, str]]) -> None:
    subprocess.run(
        [sys.executable, "-c", PUBLISH_AS_THE_EXAMPLE, json.dumps([redis_server.port, items])],
        env=env,
        cwd=EXAMPLE,
        check=True,
        timeout=60,
    )


def test_landing_page_links_the_three_chats(chat_server, open_browser):
    driver = open_browser()
    driver.get(chat_server.http_url("/"))
    links = {link.get_attribute("pathname") for link in driver.find_elements(By.CSS_SELECTOR, ".cards a")}
    assert links == {"/chat/", "/userchat/", "/groupchat/"}
    assert "secret" in driver.find_element(By.TAG_NAME, "main").text
    css = driver.execute_script("return getComputedStyle(document.querySelector('.bar')).display")
    assert css == "flex", "the stylesheet was not served"
    screenshot(driver, "home")


def test_broadcast_chat_between_two_browsers(chat_server, open_browser):
    first, second = open_browser(), open_browser()
    for driver in (first, second):
        driver.get(chat_server.http_url("/chat/"))
        wait_connected(driver)
    send(first, "Hi from the first window")
    for driver in (first, second):
        wait_until(
            lambda driver=driver: "Hi from the first window" in messages(driver), message="the message in both windows"
        )
    send(second, "And hello back")
    wait_until(lambda: messages(first)[-1:] == ["And hello back"], message="the reply in the first window")
    screenshot(first, "chat")


def test_reload_shows_the_persisted_welcome(chat_server, open_browser, redis_server):
    """The view publishes the welcome before the page's socket exists: the page
    can only get it from the persisted copy (WS4REDIS_EXPIRE)."""
    driver = open_browser()
    for _ in range(2):
        driver.get(chat_server.http_url("/chat/"))
        wait_connected(driver)
        wait_until(lambda: messages(driver)[:1] == [WELCOME], message="the welcome message")
    assert redis_server.client().ttl("demo:broadcast:chat") > 0


def test_user_chat_reaches_only_the_addressee(chat_server, open_browser):
    john, mary, admin = open_browser(), open_browser(), open_browser()
    for driver, name in ((john, "john"), (mary, "mary"), (admin, "admin")):
        sign_in(driver, chat_server, name, "/userchat/")
    Select(john.find_element(By.NAME, "user")).select_by_value("mary")
    send(john, "Just for you, Mary")
    wait_until(lambda: "Just for you, Mary" in messages(mary), message="mary to receive john's message")
    assert "john → mary" in mary.find_element(By.CSS_SELECTOR, "#messages li").text
    wait_until(lambda: "Just for you, Mary" in messages(john), message="john's page to show what he sent")
    time.sleep(0.5)
    assert messages(admin) == []
    screenshot(mary, "userchat")
    # Stored (a PublishableModel): both pages show it again from the database.
    for driver, meta in ((mary, "john → mary"), (john, "you → mary")):
        driver.get(chat_server.http_url("/userchat/"))
        wait_until(
            lambda driver=driver: "Just for you, Mary" in messages(driver), message="the message from the history"
        )
        assert meta in driver.find_element(By.CSS_SELECTOR, "#messages li").text


def test_broadcast_chat_lists_who_is_here(chat_server, open_browser):
    """WS4REDIS_PRESENCE: the page gets the state with its subscription, then
    joins and leaves, through ws4redis.js' presence, join and leave callbacks."""
    john, mary = open_browser(), open_browser()
    here = lambda driver: driver.find_element(By.ID, "here").text  # noqa: E731
    sign_in(john, chat_server, "john", "/chat/")
    wait_until(lambda: here(john) == "Logged in here: john", message="john to see himself")
    sign_in(mary, chat_server, "mary", "/chat/")
    wait_until(lambda: here(mary) == "Logged in here: john, mary", message="mary to see both")
    wait_until(lambda: here(john) == "Logged in here: john, mary", message="john to see mary join")
    mary.get(chat_server.http_url("/"))  # the page hidden (kept for the back button) closes its socket
    wait_until(lambda: here(john) == "Logged in here: john", message="john to see mary leave")
    mary.back()
    wait_until(lambda: here(john) == "Logged in here: john, mary", message="john to see mary back")
    mary.execute_script("window.chatClient.close()")
    wait_until(lambda: here(john) == "Logged in here: john", message="john to see mary leave again")
    sent = [json.loads(frame) for frame in frames(john)["sent"] if frame.startswith("{")]
    assert [op.get("presence") for op in sent if op["op"] == "subscribe"] == [True]


def test_user_chat_post_needs_the_csrf_token(chat_server, open_browser):
    """The view is CSRF-protected: a POST without the token is refused."""
    driver = open_browser()
    sign_in(driver, chat_server, "john", "/userchat/")
    status = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const body = new FormData();
        body.append('user', 'mary');
        body.append('message', 'forged');
        fetch('/userchat/', {method: 'POST', body}).then(r => done(r.status));
    """)
    assert status == 403


def test_sign_out_and_the_admin(chat_server, open_browser):
    driver = open_browser()
    sign_in(driver, chat_server, "admin", "/chat/")
    driver.get(chat_server.http_url("/admin/"))
    assert "Site administration" in driver.title
    driver.get(chat_server.http_url("/"))
    driver.find_element(By.CSS_SELECTOR, ".who button").click()
    wait_until(lambda: driver.find_elements(By.LINK_TEXT, "Sign in"), message="the page to show 'Sign in'")
    driver.get(chat_server.http_url("/userchat/"))
    assert "/accounts/login/" in driver.current_url


def test_group_chat_reaches_only_members(chat_server, open_browser):
    john, mary, admin = open_browser(), open_browser(), open_browser()
    for driver, name in ((john, "john"), (mary, "mary"), (admin, "admin")):
        sign_in(driver, chat_server, name, "/groupchat/")
    assert "in no group" in admin.find_element(By.TAG_NAME, "main").text
    Select(john.find_element(By.NAME, "group")).select_by_value("chatusers")
    send(john, "Hello chatusers")
    for member in (john, mary):
        wait_until(lambda member=member: "Hello chatusers" in messages(member), message="every member to receive it")
    time.sleep(0.5)
    assert messages(admin) == []
    screenshot(mary, "groupchat")


def test_page_reconnects_after_a_server_restart_but_not_after_close(redis_server, example_env, open_browser):
    """The broadcast chat reconnects; when more was published meanwhile than
    the history keeps, it says so (its client's recovered(false))."""
    server = start_example(redis_server, example_env)
    try:
        driver = open_browser()
        driver.get(server.http_url("/chat/"))
        wait_connected(driver)
        wait_until(lambda: messages(driver) == [WELCOME], message="the welcome message")
        assert server.stop() == 0, server.log()
        wait_until(
            lambda: not driver.execute_script("return chatClient.is_connected()"),
            message="the page to notice the server is gone",
        )
        # More than the history keeps (WS4REDIS_HISTORY_SIZE = 100): the page says
        # so and shows the channel's persisted message, the last one.
        publish_as_the_example(
            redis_server, example_env, [("chat", {"broadcast": True}, f"missed {n}") for n in range(1, 102)]
        )
        server = start_example(redis_server, example_env, port=server.port)
        wait_connected(driver, timeout=30)
        wait_until(
            lambda: messages(driver)[1:] == [NOT_RECOVERED, "missed 101"],
            message="the notice and the persisted message",
        )
        redis = redis_server.client()
        wait_until(
            lambda: redis.publish("demo:broadcast:chat", "after the restart") > 0,
            message="the page's channel to be subscribed again",
        )
        wait_until(lambda: "after the restart" in messages(driver), message="the message after the restart")

        driver.execute_script("chatClient.close()")
        # A reconnect, if close() failed to stop it, would come within a second.
        time.sleep(3)
        assert driver.execute_script("return chatClient.is_closed()")
        assert redis.pubsub_numsub("demo:broadcast:chat") == [(b"demo:broadcast:chat", 0)]
    finally:
        server.stop()


def test_heartbeats_keep_the_page_connected_and_never_reach_receive_message(chat_server, open_browser):
    """Three heartbeat intervals (5 s each) and more: still on the first
    connection, heartbeats went both ways, and none was shown as a message."""
    driver = open_browser()
    driver.get(chat_server.http_url("/chat/"))
    wait_connected(driver)
    frames(driver)  # forget what came before
    driver.execute_script("""
        window.stateChanges = 0;
        new MutationObserver(() => { window.stateChanges += 1; })
            .observe(document.getElementById('status'), {childList: true});
    """)
    time.sleep(16.5)
    assert driver.execute_script("return chatClient.is_connected() && window.stateChanges") == 0
    seen = frames(driver)
    assert seen["sent"].count(HEARTBEAT) >= 3
    assert seen["received"].count(HEARTBEAT) >= 3
    assert HEARTBEAT not in messages(driver)


def test_missed_heartbeats_close_and_reconnect(chat_server, open_browser):
    """A client whose heartbeats go unanswered (the server's heartbeat is not
    the one it waits for) closes after three misses and opens a new socket."""
    driver = open_browser()
    driver.get(chat_server.http_url("/chat/"))
    wait_connected(driver)
    driver.execute_script("""
        window.probe = {opened: 0, closes: [], received: []};
        window.probeClient = WS4Redis({
            uri: document.querySelector('section.chat').dataset.wsUri + 'chat?subscribe-broadcast',
            heartbeat_msg: 'never-answered', heartbeat_interval: 0.2, max_reconnect_delay: 0.5,
            connected: () => { probe.opened += 1; },
            disconnected: (evt) => { probe.closes.push(evt.code); },
            receive_message: (data) => { probe.received.push(data); },
        });
    """)
    probe = wait_until(
        lambda: p if (p := driver.execute_script("return probe"))["opened"] >= 2 else None,
        message="a second connection after the missed heartbeats",
    )
    assert probe["closes"][0] == 4000
    driver.execute_script("probeClient.close()")


def test_client_api(chat_server, open_browser):
    driver = open_browser()
    driver.get(chat_server.http_url("/chat/"))
    wait_connected(driver)
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const out = {};
        try { WS4Redis({}); } catch (error) { out.error = error.message; }
        const client = WS4Redis({uri: chatClient && document.querySelector('section.chat').dataset.wsUri});
        out.withoutNew = client instanceof WS4Redis;
        out.connecting = client.is_connecting();
        import('/static/twisted_ws4redis/js/ws4redis.mjs').then((module) => {
            out.module = module.default === WS4Redis && module.WS4Redis === WS4Redis
                && module.connect === WS4Redis.connect;
            const wait = setInterval(() => {
                if (!client.is_connected()) return;
                clearInterval(wait);
                out.state = client.get_state();
                client.close();
                out.closing = client.is_closing();
                done(out);
            }, 50);
        });
    """)
    assert result == {
        "error": "No Websocket URI in options",
        "withoutNew": True,
        "connecting": True,
        "module": True,
        "state": 1,
        "closing": True,
    }


# -- the ws4redis.v2 client ------------------------------------------------------------


def page_state(driver) -> dict:
    return driver.execute_script("return window.probe")


def test_v2_page_gets_what_it_missed_on_each_facility_across_a_server_restart(redis_server, example_env, open_browser):
    """The broadcast chat (its own subscription, its own list) and two more
    subscriptions on its ws4redis.v2 client: messages published while the
    server is down are shown once each, in order, per facility, after it is
    back. The group one had seen no message with an id: it is told that
    nothing could be recovered and gets the channel's persisted message."""
    # What other tests left on these channels (a persisted message, a history) would come first.
    for channel in ("demo:user:john:userchat", "demo:group:chatusers:groupchat"):
        redis_server.client().delete(*history.publish_keys(channel, "demo:"))
    server = start_example(redis_server, example_env)
    try:
        driver = open_browser()
        sign_in(driver, server, "john", "/chat/")
        wait_until(lambda: messages(driver) == [WELCOME], message="the chat's welcome")
        driver.execute_script("""
            window.probe = {userchat: [], groupchat: [], subscribed: [], recovered: {userchat: [], groupchat: []}};
            ['userchat', 'groupchat'].forEach(function (facility) {
                chatClient.subscribe(facility, facility === 'userchat' ? 'user' : 'group', function (data) {
                    probe[facility].push(data);
                }, {
                    subscribed: function () { probe.subscribed.push(facility); },
                    recovered: function (ok) { probe.recovered[facility].push(ok); }
                });
            });
        """)
        wait_until(
            lambda: sorted(page_state(driver)["subscribed"]) == ["groupchat", "userchat"], message="both subscriptions"
        )
        john = {"users": ["john"]}
        publish_as_the_example(
            redis_server, example_env, [("chat", {"broadcast": True}, "before"), ("userchat", john, "u before")]
        )
        wait_until(
            lambda: messages(driver) == [WELCOME, "before"] and page_state(driver)["userchat"] == ["u before"],
            message="the messages before the stop",
        )

        assert server.stop() == 0, server.log()
        wait_until(
            lambda: not driver.execute_script("return chatClient.is_connected()"),
            message="the page to notice the server is gone",
        )
        missed = []
        for n in range(1, 4):
            missed += [("chat", {"broadcast": True}, f"down {n}"), ("userchat", john, f"u down {n}")]
        missed += [
            ("groupchat", {"groups": ["chatusers"]}, "g down 1"),
            ("groupchat", {"groups": ["chatusers"]}, "g down 2"),
        ]
        publish_as_the_example(redis_server, example_env, missed)
        server = start_example(redis_server, example_env, port=server.port)
        wait_connected(driver, timeout=45)

        chat = [WELCOME, "before", "down 1", "down 2", "down 3"]
        userchat = ["u before", "u down 1", "u down 2", "u down 3"]
        wait_until(
            lambda: (
                messages(driver)[-1:] == ["down 3"]
                and page_state(driver)["userchat"][-1:] == ["u down 3"]
                and page_state(driver)["groupchat"]
            ),
            message="the last messages published while down",
        )
        assert messages(driver) == chat
        assert page_state(driver)["userchat"] == userchat
        # Live again, after what was recovered, and nothing came twice.
        publish_as_the_example(
            redis_server, example_env, [("chat", {"broadcast": True}, "after"), ("userchat", john, "u after")]
        )
        wait_until(
            lambda: messages(driver)[-1:] == ["after"] and page_state(driver)["userchat"][-1:] == ["u after"],
            message="the messages after the restart",
        )
        state = page_state(driver)
        assert messages(driver) == [*chat, "after"]
        assert state["userchat"] == [*userchat, "u after"]
        assert state["groupchat"] == ["g down 2"]
        assert state["recovered"] == {"userchat": [True], "groupchat": [False]}
        screenshot(driver, "chat-recovered")
    finally:
        server.stop()


def test_v2_client_callbacks(chat_server, open_browser):
    driver = open_browser()
    driver.get(chat_server.http_url("/chat/"))
    wait_connected(driver)
    tag = unique("v2")
    out = driver.execute_async_script(
        """
        const [tag, done] = arguments;
        const out = {received: [], unmatched: []};
        const client = WS4Redis.connect({
            uri: document.querySelector('section.chat').dataset.wsUri, heartbeat_msg: WS4REDIS_HEARTBEAT,
            error: (reply) => out.unmatched.push(reply),
        });
        const publish = (facility, audience, data) => new Promise((resolve) => {
            client.publish(facility, audience, data, (error, id) => resolve({error, id}));
        });
        // Before the socket is open: sent once it is, after the subscription.
        const early = publish('chat', 'broadcast', tag + ' early');
        const sub = client.subscribe('chat', 'broadcast', (data, message) => {
            out.received.push([typeof data === 'string' ? data : Array.from(new Uint8Array(data)), message.id]);
        }, {
            subscribed: (reply) => { out.subscribed = reply; },
            recovered: (ok) => { out.recovered = ok; },
            error: (reply) => { out.subscribeError = reply; },
        });
        (async () => {
            out.early = await early;
            out.binary = await publish('chat', 'broadcast', new Uint8Array([0, 1, 2, 255]));
            // Two at once: each answer reaches its own callback.
            [out.one, out.two] = await Promise.all([publish('chat', 'broadcast', tag + ' one'),
                                                    publish('chat', 'broadcast', tag + ' two')]);
            // A socket's own message and the answer to its publish come in either order.
            await new Promise((resolve) => {
                const wait = setInterval(() => {
                    if (out.received.some(([data]) => data === tag + ' two')) { clearInterval(wait); resolve(); }
                }, 20);
            });
            out.refused = await new Promise((resolve) => {
                client.subscribe('elsewhere', 'broadcast', () => {}, {error: resolve});
            });
            out.notPublished = await publish('userchat', 'user', tag + ' forged');
            out.unsubscribed = await new Promise((resolve) => sub.unsubscribe(resolve));
            out.afterUnsubscribe = await publish('chat', 'broadcast', tag + ' unheard');
            out.sub = {facility: sub.facility, audience: sub.audience, last_id: sub.last_id};
            client.close();
            out.afterClose = await publish('chat', 'broadcast', tag + ' never');
            done(out);
        })();
    """,
        tag,
    )
    ids = [out[name]["id"] for name in ("early", "binary", "one", "two")]
    assert all(out[name]["error"] is None for name in ("early", "binary", "one", "two")), out
    assert all(re.fullmatch(r"\d+-\d+", message_id) for message_id in ids), ids
    assert ids == sorted(ids, key=lambda message_id: tuple(map(int, message_id.split("-"))))
    assert len(set(ids)) == 4
    assert out["subscribed"]["op"] == "subscribed"
    assert isinstance(out["subscribed"]["ref"], int)
    assert (out["subscribed"]["facility"], out["subscribed"]["audience"]) == ("chat", "broadcast")
    assert "recovered" not in out["subscribed"]
    assert "recovered" not in out
    assert "subscribeError" not in out
    # The channel's persisted message first (the welcome), then the four, each with its id.
    expected = [[f"{tag} early", ids[0]], [[0, 1, 2, 255], ids[1]], [f"{tag} one", ids[2]], [f"{tag} two", ids[3]]]
    assert out["received"][1:] == expected, out["received"]
    assert out["refused"]["code"] == 403
    assert out["notPublished"]["error"]["code"] == 403
    assert out["notPublished"]["id"] is None
    assert out["unsubscribed"] is None
    assert out["afterUnsubscribe"]["error"] is None
    assert out["sub"] == {"facility": "chat", "audience": "broadcast", "last_id": ids[3]}
    assert out["afterClose"]["error"]["code"] == 0
    assert out["afterClose"]["id"] is None
    assert out["unmatched"] == []


def example_login(server: TwistdServer, username: str) -> str:
    """Sign in through the example's login form (CSRF token and all); the Cookie header value."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(server.http_url("/accounts/login/"), timeout=10) as response:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode()).group(1)
    form = urllib.parse.urlencode({"username": username, "password": "secret", "csrfmiddlewaretoken": token})
    with opener.open(server.http_url("/accounts/login/"), data=form.encode(), timeout=10) as response:
        assert response.url.endswith("/"), response.url
    assert "sessionid" in {cookie.name for cookie in jar}
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in jar)


def test_the_example_lets_browsers_publish_only_where_a_page_needs_it(chat_server, redis_server):
    """The example's WS4REDIS_ALLOWED_CHANNELS (chatserver.websocket_access),
    driven by a client that asks for more than the pages do."""
    # A facility no page uses is refused, publishing or not.
    for path in ("elsewhere?subscribe-broadcast&publish-broadcast", f"{unique('fill')}?publish-broadcast"):
        with pytest.raises(InvalidStatus) as refused:
            connect(chat_server.ws_url(path), open_timeout=5)
        assert refused.value.response.status_code == 403

    # The broadcast chat publishes to its broadcast channel and nowhere else.
    payload = unique("anonymous")
    with (
        recording(redis_server, "chat") as recorder,
        connect(
            chat_server.ws_url(
                "chat?subscribe-broadcast&publish-broadcast&publish-session&publish-user&subscribe-session"
            ),
            open_timeout=5,
        ) as ws,
    ):
        ws.send(payload)
        # The example keeps a history: the channel carries the payload in an envelope.
        channels = set()
        while True:
            channel, data = recorder.next()
            channels.add(channel)
            if history.unwrap(data)[1] == payload.encode():
                break
        assert channels == {"demo:broadcast:chat"}
        # Nothing near 1 MiB is kept for an hour: the example's messages are small.
        ws.send("x" * 9000)
        with pytest.raises(ConnectionClosedError):
            while True:
                ws.recv(timeout=5)
        assert ws.close_code == 1009
    assert "publish-session&publish-user&subscribe-session tcp" in chat_server.log()
    assert re.search(
        r"WSCONNECT /ws/chat\?subscribe-broadcast&publish-broadcast&publish-session\S* \S+ "
        r"subscribe=\['demo:broadcast:chat'\] publish=\['demo:broadcast:chat'\]",
        chat_server.log(),
    )

    # A member cannot publish to the group chat (or anywhere) from a socket:
    # only the view does, and it stamps the sender.
    channel = "demo:group:chatusers:groupchat"
    cookie = example_login(chat_server, "john")
    redis_server.client().delete(channel)  # a message kept from another test would come first
    with (
        recording(redis_server, "groupchat", pattern=channel) as recorder,
        connect(
            chat_server.ws_url(
                "groupchat?subscribe-group&publish-group&publish-broadcast&publish-user&publish-session"
            ),
            additional_headers={"Cookie": cookie},
            open_timeout=5,
        ) as ws,
    ):
        ws.send(json.dumps({"from": "mary", "to": "chatusers", "text": "forged"}))
        round_trip(ws)
        wait_subscribed(redis_server.client(), channel, count=2)  # the recorder and the server
        redis_server.client().publish(channel, "after the forgery")
        assert recorder.next() == (channel, b"after the forgery")
        received = ws.recv(timeout=5)
        while received == HEARTBEAT:
            received = ws.recv(timeout=5)
        assert received == "after the forgery"
