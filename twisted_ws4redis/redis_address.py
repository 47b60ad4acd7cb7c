"""Where Redis is: one value type read from settings or a URL, used by the
publisher (redis-py, blocking or asyncio) and the reactor's clients (txredisapi).

Redis may be named directly (host and port, or a UNIX socket) or through
Sentinel: a list of Sentinels and the name of the service they watch. Then
both clients ask the Sentinels where the master is whenever they (re)connect,
and so follow a failover. Or it is a Redis Cluster, named by some of its nodes
(``startup_nodes``): the clients learn the others from them (redis-py's
``RedisCluster`` on the Django side, ``server.cluster.ClusterBus`` on the
reactor), and messages go over sharded pub/sub.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

if TYPE_CHECKING:
    import redis
    import redis.asyncio

#: Keys WS4REDIS_CONNECTION accepts (redis-py's names, as in ws4redis, for
#: Sentinel those of ``redis.sentinel.Sentinel.master_for``, for a cluster
#: ``redis.cluster.RedisCluster``'s ``startup_nodes``).
CONNECTION_KEYS = frozenset(
    {
        "host",
        "port",
        "db",
        "password",
        "username",
        "unix_socket_path",
        "ssl",
        "socket_timeout",
        "socket_connect_timeout",
        "sentinels",
        "service_name",
        "sentinel_password",
        "startup_nodes",
    }
)

#: What the cluster's nodes cannot be combined with.
_NOT_WITH_CLUSTER = ("host", "port", "unix_socket_path", "sentinels", "service_name", "sentinel_password")


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
    #: ((host, port), ...) of Sentinels watching ``service_name``; empty: no Sentinel.
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    sentinel_password: str | None = None
    #: ((host, port), ...) of some nodes of a Redis Cluster; empty: no cluster.
    startup_nodes: tuple[tuple[str, int], ...] = ()

    @property
    def cluster(self) -> bool:
        """A Redis Cluster: sharded pub/sub, keys on their slot's master."""
        return bool(self.startup_nodes)

    @classmethod
    def from_dict(cls, values: dict, name: str = "WS4REDIS_CONNECTION") -> RedisAddress:
        """Validate a redis-py style dict; errors name the setting."""
        if not isinstance(values, dict):
            url = " (a Redis URL is what the server's --redis option takes)" if isinstance(values, str) else ""
            raise ValueError(  # noqa: TRY004 (callers catch ValueError for every bad setting)
                f"{name} must be a dict such as {{'host': 'localhost', 'port': 6379, 'db': 0}}, "
                f"got {type(values).__name__}{url}"
            )
        unknown = set(values) - CONNECTION_KEYS
        if unknown:
            guesses = [
                f"{key!r}: did you mean {close[0]!r}?"
                for key in sorted(unknown, key=str)
                for close in [difflib.get_close_matches(str(key), CONNECTION_KEYS, n=1)]
                if close
            ]
            raise ValueError(
                f"{name} has unknown key(s) {sorted(unknown, key=str)}"
                f"{'; ' + ' '.join(guesses) if guesses else ''}; allowed: {sorted(CONNECTION_KEYS)}"
            )
        values = {key: value for key, value in values.items() if value is not None}
        if "sentinels" in values:
            values["sentinels"] = _node_list(values["sentinels"], name, "sentinels", "a Sentinel")
        if "startup_nodes" in values:
            mixed = [key for key in _NOT_WITH_CLUSTER if key in values]
            if mixed:
                raise ValueError(
                    f"{name}: 'startup_nodes' (a Redis Cluster) cannot be combined with {mixed}: "
                    f"give the cluster's nodes in 'startup_nodes' only"
                )
            values["startup_nodes"] = _node_list(values["startup_nodes"], name, "startup_nodes", "a cluster node")
        address = cls(**values)
        address._check(name)
        return address

    @classmethod
    def from_url(cls, url: str, name: str = "--redis") -> RedisAddress:
        """redis://[user:password@]host[:port][/db], rediss://… (TLS),
        unix:///path/to/socket[?db=N] (``password=`` may be given in the query),
        redis+sentinel://[:password@]host:port[,host:port…]/service_name[/db], or
        redis+cluster://[user:password@]host:port[,host:port…][/0] (rediss+cluster:// for TLS)."""
        if url.startswith("redis+sentinel://"):
            return cls._from_sentinel_url(url, name)
        if url.startswith(("redis+cluster://", "rediss+cluster://")):
            return cls._from_cluster_url(url, name)
        parts = urlsplit(url)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        password = unquote(parts.password) if parts.password else query.get("password")
        username = unquote(parts.username) if parts.username else None
        try:
            if parts.scheme in ("redis", "rediss"):
                db = int(parts.path.strip("/") or query.get("db", "0"))
                address = cls(
                    host=parts.hostname or "localhost",
                    port=parts.port or 6379,
                    db=db,
                    password=password,
                    username=username,
                    ssl=parts.scheme == "rediss",
                )
            elif parts.scheme == "unix":
                address = cls(
                    unix_socket_path=parts.path, db=int(query.get("db", 0)), password=password, username=username
                )
            else:
                raise ValueError("the scheme must be redis://, rediss:// or unix://")
        except ValueError as exc:
            raise ValueError(f"{name}: {url!r} is not a Redis URL: {exc}") from None
        address._check(name)
        return address

    @classmethod
    def _from_sentinel_url(cls, url: str, name: str) -> RedisAddress:
        rest = url[len("redis+sentinel://") :]
        netloc, _, path = rest.partition("/")
        credentials, _, hosts = netloc.rpartition("@")
        password = unquote(credentials.partition(":")[2]) or None if credentials else None
        segments = [segment for segment in path.split("/") if segment]
        try:
            if not segments or len(segments) > 2:
                raise ValueError("give the service name after the Sentinels: …/mymaster[/db]")
            address = cls(
                sentinels=_node_list(hosts.split(","), name, "sentinels", "a Sentinel"),
                service_name=unquote(segments[0]),
                db=int(segments[1]) if len(segments) == 2 else 0,
                password=password,
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {url!r} is not a Redis URL: {exc}") from None
        address._check(name)
        return address

    @classmethod
    def _from_cluster_url(cls, url: str, name: str) -> RedisAddress:
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        credentials, _, hosts = netloc.rpartition("@")
        user, _, password = credentials.partition(":")
        try:
            if "?" in path or "?" in hosts:
                raise ValueError("a cluster URL takes no query")
            db = int(path.strip("/") or 0)
            address = cls(
                startup_nodes=_node_list(hosts.split(",") if hosts else [], name, "startup_nodes", "a cluster node"),
                db=db,
                password=unquote(password) or None,
                username=unquote(user) or None,
                ssl=scheme == "rediss+cluster",
            )
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
        if bool(self.sentinels) != bool(self.service_name):
            raise ValueError(f"{name}: 'sentinels' and 'service_name' go together (Redis through Sentinel)")
        if self.sentinels and (self.unix_socket_path or self.ssl):
            raise ValueError(f"{name}: Sentinel cannot be combined with unix_socket_path or ssl")
        if self.cluster and self.db != 0:
            raise ValueError(f"{name}: a Redis Cluster has only database 0, got db {self.db!r}")

    def redis_py_kwargs(self, asynchronous: bool = False) -> dict:
        """Keyword arguments for redis-py's ``ConnectionPool`` (``redis.asyncio``'s
        when ``asynchronous``). One immediate retry (a pooled connection that
        Redis closed, e.g. in a restart), no back-off sleeps: a Redis that is
        down fails the call at once."""
        from redis.backoff import NoBackoff

        flavour = _redis_py(asynchronous)
        kwargs = {
            "db": self.db,
            "password": self.password,
            "username": self.username,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "retry": flavour.Retry(NoBackoff(), 1),
        }
        if self.unix_socket_path:
            kwargs.update(path=self.unix_socket_path, connection_class=flavour.UnixDomainSocketConnection)
        else:
            kwargs.update(host=self.host, port=self.port)
            if self.ssl:
                kwargs["connection_class"] = flavour.SSLConnection
        return kwargs

    def redis_py_client(self) -> redis.Redis:
        """A blocking ``redis.Redis`` with its own pool: to the master through
        the Sentinels (found again after a failover), or straight to Redis."""
        return self._redis_py_client(asynchronous=False)

    def redis_py_asyncio_client(self) -> redis.asyncio.Redis:
        """The same as a ``redis.asyncio.Redis``, for one event loop (its
        connections belong to the loop that opened them); close it with
        ``aclose_asyncio_client``."""
        return self._redis_py_client(asynchronous=True)

    def _redis_py_client(self, asynchronous: bool):
        flavour = _redis_py(asynchronous)
        kwargs = self.redis_py_kwargs(asynchronous)
        if self.cluster:
            # redis-py's cluster client makes its own connections per node
            # (and follows MOVED and failovers); ``retry`` as for one Redis.
            for key in ("host", "port", "db", "connection_class"):
                kwargs.pop(key, None)
            return flavour.RedisCluster(
                startup_nodes=[flavour.ClusterNode(host, port) for host, port in self.startup_nodes],
                ssl=self.ssl,
                **kwargs,
            )
        if self.sentinels:
            for key in ("host", "port"):
                kwargs.pop(key)
            sentinel = flavour.Sentinel(
                list(self.sentinels),
                sentinel_kwargs={
                    "password": self.sentinel_password,
                    "socket_timeout": self.socket_timeout,
                    "socket_connect_timeout": self.socket_connect_timeout,
                },
            )
            return sentinel.master_for(self.service_name, **kwargs)
        return flavour.Redis(connection_pool=flavour.ConnectionPool(**kwargs))

    def client_endpoint(self, reactor):
        """A Twisted client endpoint reaching this Redis (for Sentinel, one
        with a ``disconnect()`` for its connections to the Sentinels)."""
        from twisted.internet import endpoints

        if self.cluster:
            raise ValueError("a Redis Cluster has no single endpoint: see node_endpoint()")
        if self.sentinels:
            return SentinelEndpoint(reactor, self)
        if self.unix_socket_path:
            return endpoints.UNIXClientEndpoint(reactor, self.unix_socket_path, timeout=self.socket_connect_timeout)
        return self.node_endpoint(reactor, self.host, self.port)

    def node_endpoint(self, reactor, host: str, port: int):
        """A Twisted client endpoint reaching the Redis at ``host:port`` with
        this address' TLS and timeout (one Redis, or one node of a cluster)."""
        from twisted.internet import endpoints

        endpoint: IStreamClientEndpoint = endpoints.HostnameEndpoint(
            reactor, host, port, timeout=self.socket_connect_timeout
        )
        if self.ssl:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = endpoints.wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint

    def __str__(self) -> str:
        if self.cluster:
            hosts = ",".join(f"{host}:{port}" for host, port in self.startup_nodes)
            return f"{'rediss' if self.ssl else 'redis'}+cluster://{hosts}"
        if self.sentinels:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.service_name}/{self.db}"
        if self.unix_socket_path:
            return f"unix://{self.unix_socket_path}?db={self.db}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"


def _redis_py(asynchronous: bool) -> SimpleNamespace:
    """redis-py's blocking or asyncio flavour of the classes both have under the
    same names, so that one mapping of our options serves both clients."""
    if asynchronous:
        import redis.asyncio as flavour
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel
    else:
        # The same names as above, on purpose (the docstring).
        import redis as flavour  # type: ignore[no-redef]
        from redis.cluster import ClusterNode, RedisCluster  # type: ignore[assignment]
        from redis.retry import Retry  # type: ignore[assignment]
        from redis.sentinel import Sentinel  # type: ignore[assignment]
    return SimpleNamespace(
        Redis=flavour.Redis,
        ConnectionPool=flavour.ConnectionPool,
        Retry=Retry,
        RedisCluster=RedisCluster,
        ClusterNode=ClusterNode,
        Sentinel=Sentinel,
        UnixDomainSocketConnection=flavour.UnixDomainSocketConnection,
        SSLConnection=flavour.SSLConnection,
    )


async def aclose_asyncio_client(client: redis.asyncio.Redis) -> None:
    """Close the connections of a ``redis_py_asyncio_client()``: its pool's and,
    through Sentinel, those to the Sentinels, or a cluster client's to every
    node (on the loop that opened them)."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        await client.aclose()
        return
    pool = client.connection_pool
    await pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in manager.sentinels if manager is not None else ():
        await sentinel.connection_pool.disconnect()


def _node_list(value, name: str, key: str, what: str) -> tuple[tuple[str, int], ...]:
    """Sentinels or cluster nodes given as [('host', port), ...] or ['host:port', ...]."""
    if isinstance(value, (str, bytes)) or not value:
        raise ValueError(f"{name}: {key} must be a non-empty list of (host, port), got {value!r}")
    sentinels: list[tuple[str, int]] = []
    for item in value:
        pair = item
        if isinstance(item, str):
            name_part, _, port_part = item.rpartition(":")
            pair = (name_part, port_part)
        try:
            host, given = pair
            port = int(given)
            if not host or not 0 < port < 65536:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {what} must be (host, port) or 'host:port', got {item!r}") from None
        sentinels.append((host, port))
    return tuple(sentinels)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master that the Sentinels name at the time of each
    connection attempt (the reactor's clients reconnect through it)."""

    def __init__(self, reactor, address: RedisAddress):
        import txredisapi

        self._reactor = reactor
        self._address = address
        self._sentinels = txredisapi.Sentinel(
            list(address.sentinels),
            password=address.sentinel_password,
            connectTimeout=address.socket_connect_timeout,
            replyTimeout=address.socket_timeout,
        )
        # A Sentinel that answers "no master" (in the middle of a failover)
        # leaves txredisapi waiting for this long before the attempt fails and
        # the next one is scheduled: keep it short.
        self._sentinels.discovery_timeout = min(1.0, address.socket_connect_timeout)

    def connect(self, factory):
        from twisted.internet.endpoints import HostnameEndpoint

        def reach(master: tuple[str, int]):
            host, port = master
            return HostnameEndpoint(self._reactor, host, port, timeout=self._address.socket_connect_timeout).connect(
                factory
            )

        return self._sentinels.discover_master(self._address.service_name).addCallback(reach)

    def disconnect(self):
        return self._sentinels.disconnect()
