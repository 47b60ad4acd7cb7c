"""Makes ``twistd ws4redis`` available; the code lives in twisted_ws4redis.server.tap."""

from twisted.application.service import ServiceMaker

ws4redis = ServiceMaker(
    "twisted_ws4redis",
    "twisted_ws4redis.server.tap",
    "Websockets for Django over Redis (ws4redis-compatible), beside the Django application.",
    "ws4redis",
)
