"""Where Redis is: one value type read from settings or a URL, used by both the
blocking publisher (redis-py) and the reactor's clients (txredisapi)."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: Keys WS4REDIS_CONNECTION accepts (redis-py's names, as in ws4redis).
CONNECTION_KEYS = frozenset(
    {"host", "port", "db", "password", "username", "unix_socket_path", "ssl",
     "socket_timeout", "socket_connect_timeout"}
)


@dataclass(frozen=True)
class RedisAddress:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    unix_socket_path: str | None = None
    ssl: bool = False
    #: Seconds a command may take before it fails (both clients).
    socket_timeout: float = 5.0
    socket_connect_timeout: float = 5.0

    @classmethod
    def from_dict(cls, values: dict, name: str = "WS4REDIS_CONNECTION") -> RedisAddress:
        """Validate a redis-py style dict; errors name the setting."""
        if not isinstance(values, dict):
            raise ValueError(f"{name} must be a dict, got {type(values).__name__}")
        unknown = set(values) - CONNECTION_KEYS
        if unknown:
            raise ValueError(
                f"{name} has unknown key(s) {sorted(unknown)}; allowed: {sorted(CONNECTION_KEYS)}")
        address = cls(**{key: value for key, value in values.items() if value is not None})
        address._check(name)
        return address

    @classmethod
    def from_url(cls, url: str, name: str = "--redis") -> RedisAddress:
        """redis://[user:password@]host[:port][/db], rediss://… (TLS) or
        unix:///path/to/socket[?db=N] (``password=`` may be given in the query)."""
        parts = urlsplit(url)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        password = unquote(parts.password) if parts.password else query.get("password")
        username = unquote(parts.username) if parts.username else None
        try:
            if parts.scheme in ("redis", "rediss"):
                db = int(parts.path.strip("/") or query.get("db", 0))
                address = cls(host=parts.hostname or "localhost", port=parts.port or 6379,
                              db=db, password=password, username=username,
                              ssl=parts.scheme == "rediss")
            elif parts.scheme == "unix":
                address = cls(unix_socket_path=parts.path, db=int(query.get("db", 0)),
                              password=password, username=username)
            else:
                raise ValueError("the scheme must be redis://, rediss:// or unix://")
        except ValueError as exc:
            raise ValueError(f"{name}: {url!r} is not a Redis URL: {exc}") from None
        address._check(name)
        return address

    def _check(self, name: str) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"{name}: port must be an integer from 1 to 65535, got {self.port!r}")
        if not isinstance(self.db, int) or self.db < 0:
            raise ValueError(f"{name}: db must be a non-negative integer, got {self.db!r}")
        for field in ("socket_timeout", "socket_connect_timeout"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive number, got {value!r}")

    def redis_py_kwargs(self) -> dict:
        """Keyword arguments for ``redis.ConnectionPool``. One immediate retry
        (a pooled connection that Redis closed, e.g. in a restart), no back-off
        sleeps: a Redis that is down fails the call at once."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs = {"db": self.db, "password": self.password, "username": self.username,
                  "socket_timeout": self.socket_timeout,
                  "socket_connect_timeout": self.socket_connect_timeout,
                  "retry": Retry(NoBackoff(), 1)}
        if self.unix_socket_path:
            import redis
            kwargs.update(path=self.unix_socket_path, connection_class=redis.UnixDomainSocketConnection)
        else:
            kwargs.update(host=self.host, port=self.port)
            if self.ssl:
                import redis
                kwargs["connection_class"] = redis.SSLConnection
        return kwargs

    def client_endpoint(self, reactor):
        """A Twisted client endpoint reaching this Redis."""
        from twisted.internet import endpoints

        if self.unix_socket_path:
            return endpoints.UNIXClientEndpoint(reactor, self.unix_socket_path,
                                                timeout=self.socket_connect_timeout)
        endpoint = endpoints.HostnameEndpoint(reactor, self.host, self.port,
                                              timeout=self.socket_connect_timeout)
        if self.ssl:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = endpoints.wrapClientTLS(optionsForClientTLS(self.host), endpoint)
        return endpoint

    def __str__(self) -> str:
        if self.unix_socket_path:
            return f"unix://{self.unix_socket_path}?db={self.db}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"
