"""Structured logs: one JSON object per line, with the interaction id of the request being
served (set by the gateway's middleware in a context variable, so every line logged while
serving that request carries it, whichever module logs it)."""

from __future__ import annotations

import datetime
import json
import logging

from kernel.context import INTERACTION_ID

__all__ = ["INTERACTION_ID", "JsonFormatter", "setup"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        interaction_id = INTERACTION_ID.get()
        if interaction_id is not None:
            line["interaction_id"] = interaction_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # structured fields: logger.x(..., extra={"fields": {...}})
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup(level: int) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
