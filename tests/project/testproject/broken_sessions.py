"""A SESSION_ENGINE whose store cannot be reached (a database or cache that is
down), for the test that a handshake gets 500 and the server goes on."""

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore


class SessionStore(DatabaseStore):
    def load(self):
        raise ConnectionError("the session store is unreachable (test)")
