"""A LOGGING formatter for tests/test_logging.py: one JSON object per record,
with the fields the server passes as ``extra``."""

import json
import logging


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "name": record.name,
                "level": record.levelname,
                "message": record.getMessage(),
                "fields": record.ws4redis,
                "flat": {name: value for name, value in vars(record).items() if name.startswith("ws4redis_")},
                "traceback": self.formatException(record.exc_info) if record.exc_info else None,
            },
            default=repr,
        )
