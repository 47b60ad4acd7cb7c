"""A script client of the demo's user chat that authenticates with a token
instead of a session cookie (twisted_ws4redis.auth).

    python manage.py ws_token john | python token_client.py

prints every message sent to john in the user chat, one a line, until
interrupted (``--count N``: after N). The token is read from standard input
(or the WS_TOKEN environment variable), not from the command line, where
``ps`` shows it to every user of the machine; it goes in the Authorization
header, not in the URL, which proxies and access logs record.
"""

import argparse
import contextlib
import os
import sys

from websockets.sync.client import connect

URL = "ws://127.0.0.1:8000/ws/userchat?subscribe-user"
HEARTBEAT = "--heartbeat--"  # the demo's WS4REDIS_HEARTBEAT


def listen(url: str, token: str, count: int | None = None) -> None:
    """Print the messages of ``url``'s websocket, opened with ``token``."""
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as websocket:
        print(f"connected to {url}", file=sys.stderr, flush=True)
        received = 0
        while count is None or received < count:
            message = websocket.recv()
            if message != HEARTBEAT:
                print(message, flush=True)
                received += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL, help=f"the websocket's URL (default: {URL})")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    arguments = parser.parse_args()
    token = os.environ.get("WS_TOKEN") or sys.stdin.readline().strip()
    if not token:
        parser.error("no token: pipe one in (manage.py ws_token USERNAME) or set WS_TOKEN")
    with contextlib.suppress(KeyboardInterrupt):
        listen(arguments.url, token, arguments.count)


if __name__ == "__main__":
    main()
