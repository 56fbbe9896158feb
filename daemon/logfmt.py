"""JSON-lines log formatting for services (deploy/): one object per record."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["ExpectedSkips", "JsonFormatter"]

_EXTRA_KEYS = ("batch_id", "cycle_id", "model_version")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class ExpectedSkips(logging.Filter):
    """Drop APScheduler's warnings that a run was skipped because the previous one still runs (or was
    missed): a long cycle (a large import being embedded) makes them every interval, and the service
    handles the same events itself (``Service._on_event``)."""

    _EXPECTED = ("maximum number of running instances reached", "was missed by")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apscheduler"):
            return True
        message = record.getMessage()
        return not any(expected in message for expected in self._EXPECTED)
