"""The interaction id of the request being served: set by the gateway's middleware in a
context variable, read by the structured-log formatter (quickpay/logs.py), so every line
logged while serving that request carries it, whichever module logs it."""

from __future__ import annotations

import contextvars

__all__ = ["INTERACTION_ID"]

INTERACTION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("interaction_id", default=None)
