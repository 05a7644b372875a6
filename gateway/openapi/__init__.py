"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json.

Request schemas come from the same msgspec Structs that validate the bodies, so
the document cannot drift from what the gateway accepts. What a Struct cannot say
is added here from the code that enforces it: the currency table and the amount
grammar of `kernel.money` (an amount's pattern depends on its currency's
exponent and on the int64 bound), the id shapes of `kernel.ids`, and the
idempotency key rule. The document is checked against the live API by
Schemathesis (tests/test_schemathesis.py): every schema-valid request must be
accepted or refused for a business reason (404/409/422), every schema-violating
one refused with 4xx, and every response must match what is declared here.

The parts: patterns.py (amount grammar, id patterns, shared shapes), operations.py
(the operation builder and parameters), request_bodies.py, resource_schemas.py and
admin_schemas.py (components), paths.py and admin_paths.py, document.py (the whole).
"""

from __future__ import annotations

from .document import openapi_document
from .patterns import IDEMPOTENCY_KEY_PATTERN, amount_pattern

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "amount_pattern", "openapi_document"]
