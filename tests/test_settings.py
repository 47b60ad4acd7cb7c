"""Settings: ws4redis' names and defaults, validated at start-up with a
message naming the bad setting; Redis addresses from settings and URLs."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from twisted_ws4redis.redis_address import RedisAddress

pytestmark = pytest.mark.usefixtures("django_in_process")

# The test project sets WEBSOCKET_URL, WS4REDIS_EXPIRE and WS4REDIS_CONNECTION;
# deleting them shows the defaults.
UNSET = ("WEBSOCKET_URL", "WS4REDIS_EXPIRE", "WS4REDIS_CONNECTION")


def settings_now():
    from twisted_ws4redis.conf import get_settings

    return get_settings()


def test_the_defaults_are_those_of_ws4redis():
    from django.conf import settings

    from twisted_ws4redis.conf import get_settings
    from twisted_ws4redis.subscriber import RedisSubscriber

    with override_settings():
        for name in UNSET:
            delattr(settings, name)
        get_settings.cache_clear()  # deleting a setting sends no setting_changed
        current = settings_now()
    get_settings.cache_clear()
    assert current.websocket_url == "/ws/"
    assert (current.connection.host, current.connection.port, current.connection.db, current.connection.password) == (
        "localhost",
        6379,
        0,
        None,
    )
    assert current.prefix == ""
    assert current.expire == 3600
    assert current.subscriber is RedisSubscriber
    assert current.heartbeat is None
    assert current.allowed_channels is None
    assert current.process_request is None


def test_the_new_limits_have_safe_defaults():
    current = settings_now()
    assert current.max_message_size == 1024 * 1024
    assert current.handshake_timeout == 30
    assert current.max_header_size == 16 * 1024
    assert current.max_publish_rate is None
    assert current.max_buffered_bytes == 4 * 1024 * 1024
    assert (current.auto_ping_interval, current.auto_ping_timeout) == (30, 30)
    assert current.facility_pattern.fullmatch("chat/room-1 café")
    assert not current.facility_pattern.fullmatch("a:b")
    assert not current.facility_pattern.fullmatch("x" * 129)
    assert not current.origins.any_origin


def test_the_request_body_limits_have_bounded_defaults():
    current = settings_now()
    assert current.max_body_size == 10 * 1024 * 1024
    assert (current.body_timeout, current.body_min_rate) == (30, 500)


def test_the_host_check_is_djangos():
    """``HttpRequest.get_host()``'s rules: ALLOWED_HOSTS patterns, '*', the DEBUG
    fallback, X-Forwarded-Host only with USE_X_FORWARDED_HOST."""
    from django.core.exceptions import DisallowedHost
    from django.http import HttpRequest

    def both(host, forwarded=None):
        headers = {"host": host} if forwarded is None else {"host": host, "x-forwarded-host": forwarded}
        origins = settings_now().origins
        ours = origins.valid_host(origins.request_host(headers))
        request = HttpRequest()
        request.META = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        try:
            request.get_host()
            djangos = True
        except DisallowedHost:
            djangos = False
        assert ours is djangos, (host, forwarded)
        return ours

    with override_settings(ALLOWED_HOSTS=[".example.com", "1.2.3.4"], DEBUG=False):
        assert both("www.example.com:8000")
        assert both("example.com")
        assert both("1.2.3.4")
        assert not both("evil.example")
        assert not both("example.com.evil.example")
        assert not both("")
        assert not both("example.com/x")
        assert not both("example.com, evil.example")
        assert not both("evil.example", forwarded="example.com")
    with override_settings(ALLOWED_HOSTS=[".example.com"], USE_X_FORWARDED_HOST=True):
        assert both("10.0.0.1:8001", forwarded="app.example.com")
        assert not both("example.com", forwarded="evil.example")
    with override_settings(ALLOWED_HOSTS=[], DEBUG=True):
        assert both("localhost:3000")
        assert both("127.0.0.1")
        assert both("[::1]:80")
        assert not both("evil.example")
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert both("anything.example")


def test_frame_limits_are_on_by_default_and_none_turns_them_off():
    current = settings_now()
    assert (current.max_frame_rate, current.max_fragments) == (1000, 1000)
    with override_settings(WS4REDIS_MAX_FRAME_RATE=None, WS4REDIS_MAX_FRAGMENTS=None):
        assert (settings_now().max_frame_rate, settings_now().max_fragments) == (None, None)


def test_no_auto_ping_when_the_interval_is_none():
    with override_settings(WS4REDIS_AUTO_PING_INTERVAL=None):
        assert settings_now().auto_ping_interval is None


def test_the_origin_check_follows_allowed_hosts():
    with override_settings(ALLOWED_HOSTS=["chat.example.com"]):
        assert settings_now().origins.allows("https://chat.example.com", "other")
    assert not settings_now().origins.allows("https://chat.example.com", "other")


def test_an_override_is_seen_at_once():
    with override_settings(WS4REDIS_PREFIX="site", WS4REDIS_HEARTBEAT="--hb--", WS4REDIS_EXPIRE=7):
        current = settings_now()
        assert (current.prefix, current.heartbeat, current.expire) == ("site:", b"--hb--", 7)
    assert settings_now().prefix == ""


def test_hooks_by_dotted_path_or_callable():
    from testproject import hooks

    with override_settings(
        WS4REDIS_ALLOWED_CHANNELS="testproject.hooks.allowed_channels",
        WS4REDIS_PROCESS_REQUEST=hooks.token_process_request,
        WS4REDIS_SUBSCRIBER="testproject.hooks.BroadcastOnlySubscriber",
    ):
        current = settings_now()
        assert current.allowed_channels is hooks.allowed_channels
        assert current.process_request is hooks.token_process_request
        assert current.subscriber is hooks.BroadcastOnlySubscriber


def test_the_reference_subscriber_path_means_ours():
    from twisted_ws4redis.subscriber import RedisSubscriber

    with override_settings(WS4REDIS_SUBSCRIBER="ws4redis.subscriber.RedisSubscriber"):
        assert settings_now().subscriber is RedisSubscriber


BAD = [
    ("WEBSOCKET_URL", "ws/"),
    ("WEBSOCKET_URL", "/ws"),
    ("WEBSOCKET_URL", None),
    ("WS4REDIS_CONNECTION", "redis://localhost"),
    ("WS4REDIS_CONNECTION", {"host": "localhost", "port": 70000}),
    ("WS4REDIS_CONNECTION", {"host": "localhost", "db": -1}),
    ("WS4REDIS_CONNECTION", {"hostname": "localhost"}),
    ("WS4REDIS_CONNECTION", {"socket_timeout": 0}),
    ("WS4REDIS_PREFIX", 3),
    ("WS4REDIS_EXPIRE", -1),
    ("WS4REDIS_EXPIRE", "3600"),
    ("WS4REDIS_EXPIRE", True),
    ("WS4REDIS_SUBSCRIBER", "testproject.hooks.nothing"),
    ("WS4REDIS_SUBSCRIBER", "testproject.hooks.allowed_channels"),
    ("WS4REDIS_HEARTBEAT", ""),
    ("WS4REDIS_HEARTBEAT", 5),
    ("WS4REDIS_ALLOWED_CHANNELS", "testproject.hooks.allowed_channelz"),
    ("WS4REDIS_ALLOWED_CHANNELS", 42),
    ("WS4REDIS_PROCESS_REQUEST", "nowhere.at.all"),
    ("WS4REDIS_MAX_MESSAGE_SIZE", 0),
    ("WS4REDIS_ALLOWED_ORIGINS", "https://example.com"),
    ("WS4REDIS_ALLOWED_ORIGINS", [None]),
    ("WS4REDIS_FACILITY_PATTERN", "[unclosed"),
    ("WS4REDIS_FACILITY_PATTERN", 5),
    ("WS4REDIS_HANDSHAKE_TIMEOUT", 0),
    ("WS4REDIS_HANDSHAKE_TIMEOUT", None),
    ("WS4REDIS_MAX_HEADER_SIZE", 1.5),
    ("WS4REDIS_MAX_PUBLISH_RATE", -1),
    ("WS4REDIS_MAX_BUFFERED_BYTES", "4M"),
    ("WS4REDIS_AUTO_PING_INTERVAL", 0),
    ("WS4REDIS_AUTO_PING_TIMEOUT", "30"),
    ("WS4REDIS_AUTO_PING_TIMEOUT", None),
    ("WS4REDIS_MAX_BODY_SIZE", None),
    ("WS4REDIS_MAX_BODY_SIZE", 1.5),
    ("WS4REDIS_BODY_TIMEOUT", 0),
    ("WS4REDIS_BODY_MIN_RATE", "500"),
    ("WS4REDIS_MAX_FRAME_RATE", 0),
    ("WS4REDIS_MAX_FRAME_RATE", "1000"),
    ("WS4REDIS_MAX_FRAGMENTS", 2.5),
    ("WS4REDIS_MAX_FRAGMENTS", -1),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_value_names_its_setting(name, value):
    """ws4redis silently allowed everything on a misspelt hook path (§R11)."""
    from twisted_ws4redis.conf import RULES, validate

    with override_settings(**{name: value}):
        with pytest.raises(ImproperlyConfigured, match=name) as raised:
            settings_now()
        # The error the system checks report (checks.py) is the one the server start raises.
        assert [(error.check_id, error.message) for error in validate(deep=True)[1]] == [
            (RULES[name].check_id, str(raised.value))
        ]


def test_each_setting_has_its_own_check_id():
    from twisted_ws4redis.conf import RULES

    ids = [rule.check_id for rule in RULES.values()]
    assert len(set(ids)) == len(ids)
    assert all(check_id.startswith("twisted_ws4redis.E") for check_id in ids)


def test_context_processor_gives_the_uri_and_a_safe_heartbeat_literal():
    from django.test import RequestFactory

    from twisted_ws4redis.context_processors import default

    request = RequestFactory().get("/", HTTP_HOST="example.com")
    with override_settings(ALLOWED_HOSTS=["example.com"], WS4REDIS_HEARTBEAT='</script>"x'):
        context = default(request)
        assert context["WEBSOCKET_URI"] == "ws://example.com/ws/"
        assert "</script>" not in context["WS4REDIS_HEARTBEAT"]
        assert context["WS4REDIS_HEARTBEAT"] == '"<\\/script>\\"x"'
        secure = RequestFactory().get("/", HTTP_HOST="example.com", secure=True)
        assert default(secure)["WEBSOCKET_URI"] == "wss://example.com/ws/"
    assert default(request)["WS4REDIS_HEARTBEAT"] == "null"


# -- Redis addresses ---------------------------------------------------------------------------


def test_redis_urls():
    assert RedisAddress.from_url("redis://user:p%40ss@db.example:6380/3") == RedisAddress(
        host="db.example", port=6380, db=3, username="user", password="p@ss"
    )
    assert RedisAddress.from_url("rediss://db.example").ssl is True
    assert RedisAddress.from_url("unix:///run/redis.sock?db=2&password=x") == RedisAddress(
        unix_socket_path="/run/redis.sock", db=2, password="x"
    )


@pytest.mark.parametrize("url", ["ftp://x", "redis://x:notaport", "redis://x/notadb", "unix:///s?db=x"])
def test_a_bad_redis_url_is_refused_with_the_option_named(url):
    with pytest.raises(ValueError, match="--redis"):
        RedisAddress.from_url(url)


def test_a_ws4redis_connection_dict_keeps_its_meaning():
    address = RedisAddress.from_dict({"host": "h", "port": 1234, "db": 5, "password": None, "unix_socket_path": None})
    assert (address.host, address.port, address.db, address.password) == ("h", 1234, 5, None)
    kwargs = RedisAddress.from_dict({"unix_socket_path": "/tmp/r.sock"}).redis_py_kwargs()
    assert kwargs["path"] == "/tmp/r.sock"
