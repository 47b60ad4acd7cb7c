# ruff: noqa: F821  (appended to mysite/settings.py, where these names are defined)
# Websockets, served by twisted_ws4redis.
INSTALLED_APPS.insert(0, "twisted_ws4redis")  # first: above staticfiles, so runserver serves websockets
INSTALLED_APPS.append("chat")
TEMPLATES[0]["OPTIONS"]["context_processors"].append("twisted_ws4redis.context_processors.default")

WEBSOCKET_URL = "/ws/"  # websockets live under ws://host/ws/<facility>
WS4REDIS_CONNECTION = {"host": "localhost", "port": 6379, "db": 0}
WS4REDIS_EXPIRE = 0  # keep no message for sockets that connect later
WS4REDIS_HEARTBEAT = "--heartbeat--"  # lets the browser notice a dead connection
