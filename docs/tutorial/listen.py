"""Print what the chat's websocket receives, until Ctrl-C."""

from websockets.sync.client import connect

with connect("ws://127.0.0.1:8000/ws/chat?subscribe-broadcast") as websocket:
    print("Listening.", flush=True)
    for message in websocket:
        if message != "--heartbeat--":  # WS4REDIS_HEARTBEAT: the server's keep-alive, not a chat message
            print(message, flush=True)
