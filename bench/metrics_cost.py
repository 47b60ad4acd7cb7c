"""What the metrics cost the hot path and a scrape, in this process (no server):
a burst dispatched to 1,000 no-op listeners by the bus as it is (counting)
and by the same loop without the counting, interleaved; then one scrape.

    .venv/bin/python bench/metrics_cost.py      # from the repository's root
"""

import os
import sys
import tempfile
import timeit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
os.environ.setdefault("TEST_DB", os.path.join(tempfile.gettempdir(), "metrics-cost.sqlite3"))
sys.path[:0] = ["tests/project", "."]
import django  # noqa: E402

django.setup()
from prometheus_client.exposition import generate_latest  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from twisted_ws4redis.conf import get_settings  # noqa: E402
from twisted_ws4redis.redis_address import RedisAddress  # noqa: E402
from twisted_ws4redis.server.health import Health  # noqa: E402
from twisted_ws4redis.server.metrics import metrics_site  # noqa: E402
from twisted_ws4redis.server.protocol import WebSocketFactory  # noqa: E402
from twisted_ws4redis.server.pubsub import Burst, PubSubMessage, RedisBus  # noqa: E402

bus = RedisBus(RedisAddress.from_url("redis://127.0.0.1:1/0"))
key = b"broadcast:x"
bus._listeners[key] = {(lambda messages: None) for _ in range(1000)}


def without(self, channel, messages):
    """_Bus._dispatch minus its three counting lines."""
    listeners = self._listeners.get(channel)
    if not listeners or not messages:
        return
    for message in reversed(messages):
        if message.id is not None:
            self._last_ids[channel] = message.id
            break
    for listener in list(listeners):
        listener(messages)  # (the bus catches a listener's exception; these raise none)


for k in (1, 100):
    burst = Burst(key, [PubSubMessage(key, b"x" * 100) for _ in range(k)])
    n = 500
    a, b = [], []
    for _ in range(40):  # interleaved, the minimum of each: the machine is shared
        a.append(timeit.timeit(lambda burst=burst: bus._dispatch(key, burst), number=n) / n)
        b.append(timeit.timeit(lambda burst=burst: without(bus, key, burst), number=n) / n)
    with_counting, no_counting = min(a), min(b)
    print(f"burst of {k} message(s) to 1,000 listeners: ", end="")
    print(f"{with_counting * 1e6:.2f} µs with counting, {no_counting * 1e6:.2f} µs without")

# A scrape: the collector and the text format (nothing in it iterates over sockets or listeners).
factory = WebSocketFactory(get_settings(), bus, ThreadPool())
_, registry = metrics_site(factory, factory.pool, Health(bus))
n = 200
scrape = min(timeit.repeat(lambda: generate_latest(registry), number=n, repeat=15)) / n
print(f"one scrape (collect + text format): {scrape * 1e6:.0f} µs")
