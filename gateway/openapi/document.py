"""The whole document: its components and paths, security schemes and shared parameters."""

from __future__ import annotations

import functools
from typing import Any

from .admin_paths import admin_paths, fraud_paths, partner_creation_paths
from .admin_schemas import admin_schemas
from .consent_paths import consent_paths, consent_schemas
from .paths import agreement_paths, event_paths, ops_paths, payment_paths
from .patterns import IDEMPOTENCY_KEY_PATTERN
from .request_bodies import request_body_schemas
from .resource_schemas import resource_schemas


@functools.lru_cache(maxsize=4)
def openapi_document(batch_items_max: int | None = None) -> dict[str, Any]:
    """The document; `batch_items_max` is the deployment's batch bound (`--batch-items-max`,
    at most BATCH_ITEMS_MAX), stated as the batch envelope's maxItems."""
    components = request_body_schemas()
    components.update(resource_schemas(batch_items_max))
    components.update(admin_schemas())
    components.update(consent_schemas())
    # In the order the paths were always listed.
    paths: dict[str, Any] = {
        **ops_paths(),
        **agreement_paths(),
        **payment_paths(),
        **partner_creation_paths(),
        **event_paths(),
        **admin_paths(),
        **fraud_paths(),
        **consent_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quickpay",
            "version": "0.1.0",
            "description": "Quick-pay open-banking API. Amounts are decimal strings; every error has "
            "the body {code, message, errors[{code, message, path}]} and every response "
            "the header x-fapi-interaction-id. A method a path does not declare is 405 "
            "with an Allow header.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "parameters": {
                "InteractionId": {
                    "name": "x-fapi-interaction-id",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Echoed on the response when it is 1-128 characters; otherwise a new "
                    "UUID-shaped id is generated and returned.",
                },
                "IdempotencyKey": {
                    "name": "x-idempotency-key",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": IDEMPOTENCY_KEY_PATTERN},
                    "description": "1-64 printable ASCII characters; a retry with the same key and body "
                    "answers the original result and never moves money twice.",
                },
            },
            "headers": {"InteractionId": {"required": True, "schema": {"type": "string", "minLength": 1}}},
            "securitySchemes": {
                "partnerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /oauth2/token (client credentials).",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator's admin token (state dir admin.token).",
                },
                "clientBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "client_id:client_secret for the token endpoint.",
                },
            },
        },
    }
