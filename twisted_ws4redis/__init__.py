"""Websockets for Django, served by Twisted: a drop-in successor of ws4redis."""

__version__ = "0.1.0"
