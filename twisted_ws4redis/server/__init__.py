"""The server, on the Twisted reactor: nothing in this package blocks the
reactor; Django code and blocking calls run on the thread pool only."""
