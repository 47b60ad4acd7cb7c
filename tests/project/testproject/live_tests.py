"""Tests of a project written with Ws4RedisLiveServerTestCase, as a user
writes them; tests/test_testing.py runs them with Django's test runner (an
in-memory SQLite test database, created and destroyed by the runner)."""

import json
import urllib.parse
import urllib.request

from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import override_settings

from twisted_ws4redis.testing import Ws4RedisLiveServerTestCase


class AudienceTests(Ws4RedisLiveServerTestCase):
    def test_a_logged_in_user_receives_what_is_published_to_them(self):
        eve = User.objects.create_user("eve")
        eves = self.connect("news", "subscribe-user", user=eve)
        anonymous = self.connect("news", "subscribe-user")
        self.assertEqual(self.publish("for eve", facility="news", users=["eve"]), 1)
        self.assertEqual(eves.receive(), "for eve")
        with self.assertRaisesMessage(AssertionError, "no message"):
            anonymous.receive(timeout=0.3)

    def test_group_names_are_stored_at_the_forced_login(self):
        bob = User.objects.create_user("bob")
        bob.groups.add(Group.objects.create(name="editors"))
        bobs = self.connect("desk", "subscribe-group", user=bob)
        self.publish("to the editors", facility="desk", groups=["editors"])
        self.assertEqual(bobs.wait_for("to the editors"), ["to the editors"])

    def test_the_server_shares_the_in_memory_databases_connection(self):
        # Inside the test's transaction: with a connection of its own, the
        # server's read would find the table locked (HTTP 500).
        with transaction.atomic():
            amy = User.objects.create_user("amy")
            amys = self.connect("news", "subscribe-user", user=amy)
        self.publish("for amy", facility="news", users=["amy"])
        self.assertEqual(amys.receive(), "for amy")

    def test_the_project_views_see_the_test_data(self):
        User.objects.create_user("zoe", password="zoe's")
        data = urllib.parse.urlencode({"username": "zoe", "password": "zoe's"}).encode()
        with urllib.request.urlopen(self.live_server_url + "/login/", data=data, timeout=5) as response:
            self.assertTrue(json.loads(response.read())["ok"])


@override_settings(WS4REDIS_HEARTBEAT="--hb--")
class OverriddenSettingsTests(Ws4RedisLiveServerTestCase):
    def test_the_server_uses_the_class_settings_and_receive_skips_heartbeats(self):
        client = self.connect("beat", "subscribe-broadcast")
        self.publish("after the beat", facility="beat", broadcast=True)
        self.assertEqual(client.connection.recv(timeout=5), "--hb--")
        self.assertEqual(client.receive(), "after the beat")
