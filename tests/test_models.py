"""Publishable models (twisted_ws4redis.models) end to end: saves and deletes
in this process (``django_in_process``, the test project's chatapp) reach the
websockets of a real ``twistd ws4redis`` through the real Redis, only once
they commit, only to the declared audience, with only the declared data.

Absence is proved by order: a later message that arrives first proves that
nothing was published before it (one path, in order)."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
from django.test import override_settings

from conftest import PROJECT, free_port, login, open_ws, project_env, unique, wait_subscribed

pytestmark = pytest.mark.usefixtures("django_in_process")

TIMEOUT = 5


def receive(ws) -> dict:
    return json.loads(ws.recv(timeout=TIMEOUT))


@pytest.fixture
def notes(server, redis_client):
    """A websocket subscribed to the Note model's broadcast facility."""
    with open_ws(server, "notes?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, "broadcast:notes")
        yield ws


def test_created_updated_deleted_reach_the_audience_with_the_listed_fields_only(notes):
    from testproject.chatapp.models import Note

    note = Note.objects.create(text="first", secret="not for the page")
    created = receive(notes)
    assert created == {
        "model": "chatapp.note",
        "pk": note.pk,
        "event": "created",
        "data": {"text": "first", "created": created["data"]["created"]},
    }
    # DjangoJSONEncoder writes milliseconds.
    assert datetime.datetime.fromisoformat(created["data"]["created"]) == note.created.replace(
        microsecond=note.created.microsecond // 1000 * 1000
    )
    note.text = "edited"
    note.save()
    assert receive(notes) == {**created, "event": "updated", "data": {**created["data"], "text": "edited"}}
    pk = note.pk
    note.delete()
    assert receive(notes) == {**created, "pk": pk, "event": "deleted", "data": {**created["data"], "text": "edited"}}


def test_a_save_publishes_when_its_transaction_commits_and_a_rolled_back_one_never(notes):
    from django.db import transaction
    from testproject.chatapp.models import Note

    from twisted_ws4redis.publisher import RedisPublisher
    from twisted_ws4redis.redis_store import RedisMessage

    with transaction.atomic():
        Note.objects.create(text="committed later")
        RedisPublisher(facility="notes", broadcast=True).publish_message(RedisMessage("marker"))
    assert notes.recv(timeout=TIMEOUT) == "marker"
    assert receive(notes)["data"]["text"] == "committed later"

    class RolledBack(Exception):
        pass

    with pytest.raises(RolledBack), transaction.atomic():
        Note.objects.create(text="rolled back")
        raise RolledBack
    with transaction.atomic():
        with pytest.raises(RolledBack), transaction.atomic():  # a savepoint rolled back
            Note.objects.create(text="rolled back to a savepoint")
            raise RolledBack
        Note.objects.create(text="committed")
    assert receive(notes)["data"]["text"] == "committed"
    assert not Note.objects.filter(text__startswith="rolled back").exists()


def test_a_per_instance_audience_reaches_its_users_and_nobody_else(server, redis_client):
    from django.contrib.auth.models import User
    from testproject.chatapp.models import DirectMessage

    users = {name: User.objects.get(username=name) for name in ("john", "mary", "ann", "admin")}
    with contextlib.ExitStack() as stack:
        sockets = {
            name: stack.enter_context(open_ws(server, "direct?subscribe-user", cookie=login(server, name)))
            for name in users
        }
        for name in users:
            wait_subscribed(redis_client, f"user:{name}:direct")
        message = DirectMessage.objects.create(sender=users["john"], recipient=users["mary"], text="hi mary")
        expected = {
            "model": "chatapp.directmessage",
            "pk": message.pk,
            "event": "created",
            "data": {"from": "john", "to": "mary", "text": "hi mary"},
        }
        assert receive(sockets["john"]) == expected
        assert receive(sockets["mary"]) == expected
        later = DirectMessage.objects.create(sender=users["admin"], recipient=users["ann"], text="hi ann")
        for name in ("ann", "admin"):
            assert receive(sockets[name])["pk"] == later.pk, f"{name} got john's message to mary"


def test_queryset_delete_publishes_per_row_update_and_bulk_create_publish_nothing(notes):
    from testproject.chatapp.models import Note

    rows = [Note.objects.create(text=f"bulk {n}") for n in range(2)]
    assert [receive(notes)["pk"] for _ in rows] == [row.pk for row in rows]
    Note.objects.filter(pk__in=[row.pk for row in rows]).update(text="updated in bulk")
    Note.objects.bulk_create([Note(text="created in bulk")])
    Note.objects.filter(pk__in=[row.pk for row in rows]).delete()
    marker = Note.objects.create(text="marker")
    seen = [(message["event"], message["pk"]) for message in (receive(notes) for _ in range(3))]
    assert sorted(seen[:2]) == [("deleted", rows[0].pk), ("deleted", rows[1].pk)]  # in Django's order
    assert seen[2] == ("created", marker.pk)


def test_a_decorated_model_publishes_all_its_fields_as_json_and_keeps_the_message(server, redis_client):
    from testproject.chatapp.models import Task

    with open_ws(server, "tasks?subscribe-group", cookie=login(server, "mary")) as ws:  # mary is staff
        wait_subscribed(redis_client, "group:staff:tasks")
        task = Task.objects.create(title="pay", cost=Decimal("12.50"), due=datetime.date(2026, 12, 24))
        assert receive(ws) == {
            "model": "chatapp.task",
            "pk": str(task.pk),
            "event": "created",
            "data": {"id": str(task.pk), "title": "pay", "cost": "12.50", "due": "2026-12-24"},
        }
    assert isinstance(task.pk, uuid.UUID)
    assert 0 < redis_client.ttl("group:staff:tasks") <= 60  # its expire=60, not the project's 0


def test_a_model_registered_in_app_ready_publishes(server, redis_client):
    from testproject.chatapp.models import Ticket

    with open_ws(server, "tickets?subscribe-broadcast") as ws:
        wait_subscribed(redis_client, "broadcast:tickets")
        ticket = Ticket.objects.create(title=unique("ticket"), owner="unlisted")
        assert receive(ws) == {
            "model": "chatapp.ticket",
            "pk": ticket.pk,
            "event": "created",
            "data": {"title": ticket.title},
        }


def test_a_publish_that_fails_after_the_commit_is_logged_and_the_save_stands(caplog):
    from testproject.chatapp.models import Note

    unreachable = {"host": "127.0.0.1", "port": free_port(), "password": "hunter2", "socket_connect_timeout": 1}
    with override_settings(WS4REDIS_CONNECTION=unreachable), caplog.at_level(logging.ERROR, "twisted_ws4redis.models"):
        note = Note.objects.create(text="saved all the same")
    assert Note.objects.filter(pk=note.pk).exists()
    [record] = [record for record in caplog.records if record.name == "twisted_ws4redis.models"]
    assert record.getMessage().startswith(f"chatapp.Note {note.pk} (created) was not published: RedisUnavailable")
    assert "hunter2" not in caplog.text


#: ``manage.py check``, then saving the mis-declared model (testproject.badpublish),
#: in a process of its own.
CHECK_AND_SAVE_FORGOTTEN = """
import django
django.setup()
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
try:
    call_command("check")
except SystemCheckError as exc:
    print("check:", exc)
call_command("migrate", run_syncdb=True, verbosity=0)
from testproject.badpublish.models import Forgotten
try:
    Forgotten.objects.create(text="x")
except ImproperlyConfigured as exc:
    print("refused:", exc, "rows:", Forgotten.objects.count())
"""


def test_a_model_without_an_audience_fails_the_check_and_cannot_be_saved(tmp_path):
    from django.conf import settings

    env = project_env(
        str(tmp_path / "db.sqlite3"), {"INSTALLED_APPS": [*settings.INSTALLED_APPS, "testproject.badpublish"]}
    )
    result = subprocess.run(
        [sys.executable, "-c", CHECK_AND_SAVE_FORGOTTEN],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check, _, refused = result.stdout.partition("refused: ")
    assert "badpublish.Forgotten: (twisted_ws4redis.E040) The model declares no audience" in check, result.stderr
    assert "badpublish.Forgotten: (twisted_ws4redis.E044) The model publishes the field 'nope'" in check
    assert refused.startswith("badpublish.Forgotten declares no audience (twisted_ws4redis.E040)"), result.stderr
    assert refused.strip().endswith("rows: 0")
