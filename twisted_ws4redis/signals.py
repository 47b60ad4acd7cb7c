"""Signals the websocket server sends, so that a project can act on sockets
without a hook setting: count or audit them, or answer what clients send.

Each is sent on the server's thread pool (receivers may use the ORM and
block), with ``send_robust``: a receiver that raises is logged by Django
(logger ``django.dispatch``, in twistd's log too) and the socket carries on.
The sender is ``twisted_ws4redis.server.protocol.WebSocketProtocol``; every
signal passes ``request``, the handshake's Django request (its ``user`` and
``session`` as authenticated), and ``facility``. One socket's signals come in
order: connected, its messages, disconnected, each after the one before has
returned. A signal without receivers is not sent (no thread is used).

Connect receivers at start-up (``AppConfig.ready()``): a plain websocket that
opens while no receiver of ``websocket_message`` or ``websocket_disconnected``
is connected keeps no request, and its later signals carry ``request=None``.
"""

from django.dispatch import Signal

#: A websocket opened. ``channels``: the Redis channels it subscribed to from
#: its URL ([] for a ws4redis.v2 socket on ``/ws/``).
websocket_connected = Signal()

#: A websocket that was connected closed. ``code``: its close code, None when
#: it ended without one (the connection dropped).
websocket_disconnected = Signal()

#: With ``WS4REDIS_MESSAGE_SIGNAL = True``: a client sent ``message`` (str for
#: a text frame, bytes for a binary one; a ws4redis.v2 ``send`` op's data).
#: ``reply(data)`` sends str or bytes back to that socket alone, from any
#: thread; after the socket closed it does nothing. Nothing more is read from
#: the socket until the receivers return.
websocket_message = Signal()
