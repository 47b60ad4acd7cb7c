"""The example's own tests, with twisted_ws4redis.testing: the real server on a
free port with a private Redis. Run them with ``python manage.py test``."""

import io
import json
import subprocess
import sys
import time
from pathlib import Path

from django.contrib.auth.models import User
from django.core.management import call_command
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from twisted_ws4redis.testing import Ws4RedisLiveServerTestCase

from .models import UserMessage
from .views import WELCOME

#: examples/chatserver/token_client.py
TOKEN_CLIENT = Path(__file__).resolve().parent.parent / "token_client.py"


class ChatTests(Ws4RedisLiveServerTestCase):
    def test_user_chat_reaches_the_addressee_only(self):
        john = User.objects.create_user("john")
        mary = User.objects.create_user("mary")
        marys_socket = self.connect("userchat", "subscribe-user", user=mary)
        johns_socket = self.connect("userchat", "subscribe-user", user=john)

        self.client.force_login(john)
        response = self.client.post("/userchat/", {"user": "mary", "message": "Hello Mary"})

        stored = UserMessage.objects.get()
        self.assertEqual(response.json(), {"ok": True, "id": stored.pk})
        self.assertEqual((stored.sender, stored.recipient, stored.text), (john, mary, "Hello Mary"))
        received = json.loads(marys_socket.receive())
        self.assertEqual(
            received,
            {
                "model": "chatserver.usermessage",
                "pk": stored.pk,
                "event": "created",
                "data": {"from": "john", "to": "mary", "text": "Hello Mary", "sent": received["data"]["sent"]},
            },
        )
        with self.assertRaisesMessage(AssertionError, "no message"):
            johns_socket.receive(timeout=0.3)

    def test_the_user_chat_page_shows_the_stored_history_of_its_user(self):
        john = User.objects.create_user("john")
        mary = User.objects.create_user("mary")
        ann = User.objects.create_user("ann")
        UserMessage.objects.create(sender=john, recipient=mary, text="first")
        UserMessage.objects.create(sender=mary, recipient=john, text="second")
        UserMessage.objects.create(sender=ann, recipient=john, text="not for mary")

        self.client.force_login(mary)
        history = self.client.get("/userchat/").context["history"]

        self.assertEqual(
            [(m["from"], m["to"], m["text"]) for m in history], [("john", "mary", "first"), ("mary", "john", "second")]
        )

    def test_the_token_client_gets_the_users_messages_without_a_cookie(self):
        """token_client.py as its docstring runs it: a token from ``manage.py ws_token``, piped in.
        (Users of their own.)"""
        User.objects.create_user("robot")
        sender = User.objects.create_user("operator")
        token = io.StringIO()
        call_command("ws_token", "robot", stdout=token)
        client = subprocess.Popen(
            [
                sys.executable,
                str(TOKEN_CLIENT),
                "--count",
                "1",
                "--url",
                self.live_server.ws_url("userchat", "subscribe-user"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            client.stdin.write(token.getvalue())
            client.stdin.close()
            self.assertIn("connected to", client.stderr.readline())
            self.client.force_login(sender)
            deadline = time.monotonic() + 10
            # Until the server has subscribed it: the client ends with the first message it gets.
            while client.poll() is None:
                self.assertLess(time.monotonic(), deadline, "the token client got no message")
                self.client.post("/userchat/", {"user": "robot", "message": "Hi"})
                time.sleep(0.2)
            self.assertEqual(client.returncode, 0, client.stderr.read())
            received = json.loads(client.stdout.read())
            self.assertEqual(
                (received["event"], received["data"]["from"], received["data"]["text"]), ("created", "operator", "Hi")
            )
        finally:
            client.kill()
            client.wait()
            client.stdout.close()
            client.stderr.close()

    def test_the_chat_page_greets_every_open_page(self):
        socket = self.connect("chat", "subscribe-broadcast")
        self.assertEqual(self.client.get("/chat/").status_code, 200)
        # The channel's persisted message may come first (another test's).
        socket.wait_for(WELCOME)

    def test_a_facility_no_page_uses_is_refused(self):
        with self.assertRaises(InvalidStatus) as refused:
            self.connect("elsewhere", "subscribe-broadcast")
        self.assertEqual(refused.exception.response.status_code, 403)

    def test_the_broadcast_chat_subscribes_and_publishes_by_op(self):
        """The chat page's ws4redis.v2 socket (no facility in its URL): each op
        is authorized by websocket_access as the URL's flags would be."""
        with connect(self.live_server.ws_url(""), subprotocols=["ws4redis.v2"], open_timeout=5) as socket:

            def reply():
                frame = socket.recv(timeout=5)
                while frame == "--heartbeat--":
                    frame = socket.recv(timeout=5)
                return json.loads(frame)

            socket.send(json.dumps({"op": "subscribe", "facility": "chat", "audience": "broadcast", "ref": 1}))
            self.assertEqual(reply(), {"op": "subscribed", "facility": "chat", "audience": "broadcast", "ref": 1})
            socket.send(
                json.dumps({"op": "publish", "facility": "chat", "audience": "broadcast", "data": "Hi", "ref": 2})
            )
            # The answer and the socket's own copy of the message, in either order.
            answers = {answer["op"]: answer for answer in (reply(), reply())}
            self.assertEqual(answers["message"]["data"], "Hi")
            self.assertEqual(answers["published"], {"op": "published", "ref": 2, "id": answers["message"]["id"]})
            for op, facility, audience in (
                ("subscribe", "elsewhere", "broadcast"),
                ("publish", "userchat", "user"),
                ("subscribe", "chat", "session"),
            ):
                socket.send(json.dumps({"op": op, "facility": facility, "audience": audience, "data": "x", "ref": 3}))
                refused = reply()
                self.assertEqual((refused["op"], refused["code"], refused["ref"]), ("error", 403, 3), refused)
