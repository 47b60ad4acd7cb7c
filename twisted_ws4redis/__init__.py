"""Websockets for Django, served by Twisted: a drop-in successor of ws4redis.

``twisted_ws4redis.server`` is the reactor side (never blocks); the modules
here are the Django side (may block) and the code both sides share."""

__version__ = "0.2.0"
