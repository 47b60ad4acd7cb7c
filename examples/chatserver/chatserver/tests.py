"""The example's own tests, with twisted_ws4redis.testing: the real server on a
free port with a private Redis. Run them with ``python manage.py test``."""
import json

from django.contrib.auth.models import User
from websockets.exceptions import InvalidStatus

from twisted_ws4redis.testing import Ws4RedisLiveServerTestCase

from .views import WELCOME


class ChatTests(Ws4RedisLiveServerTestCase):
    def test_user_chat_reaches_the_addressee_only(self):
        john = User.objects.create_user("john")
        mary = User.objects.create_user("mary")
        marys_socket = self.connect("userchat", "subscribe-user", user=mary)
        johns_socket = self.connect("userchat", "subscribe-user", user=john)

        self.client.force_login(john)
        response = self.client.post("/userchat/", {"user": "mary", "message": "Hello Mary"})

        self.assertEqual(response.json(), {"ok": True, "received": 1})
        self.assertEqual(json.loads(marys_socket.receive()), {"from": "john", "to": "mary", "text": "Hello Mary"})
        with self.assertRaisesMessage(AssertionError, "no message"):
            johns_socket.receive(timeout=0.3)

    def test_the_chat_page_greets_every_open_page(self):
        socket = self.connect("chat", "subscribe-broadcast")
        self.assertEqual(self.client.get("/chat/").status_code, 200)
        self.assertEqual(socket.receive(), WELCOME)

    def test_a_facility_no_page_uses_is_refused(self):
        with self.assertRaises(InvalidStatus) as refused:
            self.connect("elsewhere", "subscribe-broadcast")
        self.assertEqual(refused.exception.response.status_code, 403)
