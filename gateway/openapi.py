"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json.

Request schemas come from the same msgspec Structs that validate the bodies, so
the document cannot drift from what the gateway accepts.
"""
from __future__ import annotations

import functools
from typing import Any

import msgspec

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR = {"description": "Error", "content": _json_content(_ref("Error"))}


def _op(summary: str, *, security: str | None = "partner", body: str | None = None,
        ok: tuple[int, str, str] = (200, "OK", "Object"), idempotent: bool = False,
        errors: tuple[int, ...] = (400, 401, 404), params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {}}
    parameters = list(params or [])
    parameters.append({"name": "x-fapi-interaction-id", "in": "header", "required": False,
                       "schema": {"type": "string", "maxLength": 128},
                       "description": "Echoed on the response; generated when absent."})
    if idempotent:
        parameters.append({"name": "x-idempotency-key", "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 64}})
    operation["parameters"] = parameters
    if security == "partner":
        operation["security"] = [{"partnerToken": []}]
    elif security == "admin":
        operation["security"] = [{"adminToken": []}]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    status, description, schema = ok
    operation["responses"][str(status)] = {"description": description, "content": _json_content(_ref(schema))}
    for code in errors:
        operation["responses"][str(code)] = _ERROR
    operation["responses"]["503"] = _ERROR
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    from . import schemas
    structs = [schemas.QuickPaymentRequest, schemas.AgreementRequest, schemas.PartnerRequest,
               schemas.AccountRequest, schemas.FundingRequest, schemas.RulesRequest,
               schemas.ListChangeRequest]
    _, components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    amount = {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]+)?$", "examples": ["12.34"]}
    components.update({
        "Object": {"type": "object"},
        "Error": {"type": "object", "required": ["code", "message", "errors"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "required": ["code", "message", "path"],
                       "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                      "path": {"type": "string"}}}}}},
        "Token": {"type": "object", "required": ["access_token", "token_type", "expires_in"], "properties": {
            "access_token": {"type": "string"}, "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer"}, "scope": {"type": "string"}}},
        "FraudDecision": {"type": "object", "properties": {
            "decision": {"enum": ["allow", "review", "block"]}, "score": {"type": "integer"},
            "reasons": {"type": "array", "items": {"type": "object", "properties": {
                "rule_id": {"type": "string"}, "action": {"type": "string"}, "score": {"type": "integer"},
                "shadow": {"type": "boolean"}, "values": {"type": "object"}}}}}},
        "Payment": {"type": "object", "required": ["payment_id", "status", "amount", "currency"], "properties": {
            "payment_id": {"type": "string"},
            "status": {"enum": ["AcceptedSettlementCompleted", "AcceptedSettlementInProcess", "Rejected"]},
            "amount": amount, "currency": {"type": "string"}, "agreement_id": {"type": "string"},
            "debtor_account": {"type": "string"}, "creditor_account": {"type": "string"},
            "reference": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "fraud": _ref("FraudDecision"), "risk": {"type": "object"}}},
        "Agreement": {"type": "object", "properties": {
            "agreement_id": {"type": "string"}, "partner_id": {"type": "string"},
            "debtor_account": {"type": "string"}, "currency": {"type": "string"},
            "status": {"type": "string"}, "per_payment_limit": amount, "daily_limit": amount,
            "created_at": {"type": "string", "format": "date-time"}}},
        "Balance": {"type": "object", "properties": {
            "account_id": {"type": "string"}, "kind": {"type": "string"}, "currency": {"type": "string"},
            "balance": amount, "stripes": {"type": "integer"}}},
        "Transactions": {"type": "object", "properties": {
            "account_id": {"type": "string"}, "next_cursor": {"type": ["string", "null"]},
            "transactions": {"type": "array", "items": {"type": "object"}}}},
        "PartnerCredentials": {"type": "object", "properties": {
            "partner_id": {"type": "string"}, "client_id": {"type": "string"},
            "client_secret": {"type": "string"}, "settlement_account": {"type": "string"}}},
        "TokenRequest": {"type": "object", "required": ["grant_type"], "properties": {
            "grant_type": {"const": "client_credentials"}, "client_id": {"type": "string"},
            "client_secret": {"type": "string"}}},
    })
    page = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            {"name": "cursor", "in": "query", "schema": {"type": "string"}}]
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Liveness", security=None, errors=())},
        "/readyz": {"get": _op("Readiness: every shard worker reachable", security=None, errors=())},
        "/openapi.json": {"get": _op("This document", security=None, errors=())},
        "/oauth2/token": {"post": {**_op("OAuth2 client credentials grant (HTTP Basic or form fields)",
                                         security=None, ok=(200, "Access token", "Token"), errors=(400, 401)),
                                   "requestBody": {"required": True, "content": {
                                       "application/x-www-form-urlencoded": {"schema": _ref("TokenRequest")},
                                       "application/json": {"schema": _ref("TokenRequest")}}}}},
        "/v1/agreements": {"post": _op("Create a quick-pay agreement over a customer's account",
                                       body="AgreementRequest", ok=(201, "Created", "Agreement"),
                                       errors=(400, 401, 413, 422))},
        "/v1/agreements/{agreement_id}": {"get": _op("Read an agreement", ok=(200, "OK", "Agreement"),
                                                     params=[_path_param("agreement_id")])},
        "/v1/quick-payments": {"post": _op(
            "Debit a customer under an agreement. Rejections are 201 with status Rejected.",
            body="QuickPaymentRequest", ok=(201, "Payment (new or replayed)", "Payment"), idempotent=True,
            errors=(400, 401, 404, 409, 413, 422))},
        "/v1/quick-payments/{payment_id}": {"get": _op("Read a payment", ok=(200, "OK", "Payment"),
                                                       params=[_path_param("payment_id")])},
        "/v1/accounts/{account_id}/balance": {"get": _op("Balance of an account under one of your agreements, or your settlement account", ok=(200, "OK", "Balance"), params=[_path_param("account_id")])},
        "/v1/accounts/{account_id}/transactions": {"get": _op(
            "Money movements, newest first, cursor-paginated", ok=(200, "OK", "Transactions"),
            params=[_path_param("account_id"), *page])},
        "/admin/v1/partners": {"post": _op("Create a partner; returns its client credentials once",
                                           security="admin", body="PartnerRequest",
                                           ok=(201, "Created", "PartnerCredentials"), errors=(400, 401, 413))},
        "/admin/v1/accounts": {"post": _op("Open a customer account", security="admin", body="AccountRequest",
                                           ok=(201, "Created", "Object"), errors=(400, 401, 413))},
        "/admin/v1/accounts/{account_id}/fundings": {"post": _op(
            "Fund an account from the bank funding account (a double-entry transfer)", security="admin",
            body="FundingRequest", ok=(201, "Transfer", "Object"), idempotent=True,
            errors=(400, 401, 404, 409, 413, 422), params=[_path_param("account_id")])},
        "/admin/v1/accounts/{account_id}/balance": {"get": _op("Any account's balance", security="admin",
                                                               ok=(200, "OK", "Balance"),
                                                               params=[_path_param("account_id")])},
        "/admin/v1/fraud/rules": {
            "get": _op("Rule set versions and audit trail per shard", security="admin", errors=(401, 409)),
            "post": _op("Validate a new rule set version and (by default) activate it everywhere",
                        security="admin", body="RulesRequest", ok=(201, "Created", "Object"),
                        errors=(400, 401, 409, 413, 422))},
        "/admin/v1/fraud/rules/{version}/activate": {"post": _op(
            "Activate a stored version", security="admin", params=[_path_param("version")])},
        "/admin/v1/fraud/rules/rollback": {"post": _op("Return to the previously active version",
                                                       security="admin")},
        "/admin/v1/fraud/lists": {"get": _op("Named lists", security="admin")},
        "/admin/v1/fraud/lists/{name}": {"post": _op("Add or remove list values at runtime", security="admin",
                                                     body="ListChangeRequest",
                                                     params=[_path_param("name")])},
        "/admin/v1/fraud/alerts": {"get": _op("Alerts raised by the post-event monitor", security="admin")},
        "/admin/v1/fraud/decisions": {"get": _op(
            "Recorded payments by fraud decision and/or rule id, newest first", security="admin",
            params=[{"name": "decision", "in": "query", "schema": {"enum": ["allow", "review", "block"]}},
                    {"name": "rule_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "quickpay", "version": "0.1.0",
                 "description": "Quick-pay open-banking API. Amounts are decimal strings; every error has "
                                "the body {code, message, errors[{code, message, path}]}."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "partnerToken": {"type": "oauth2", "flows": {"clientCredentials": {
                "tokenUrl": "/oauth2/token", "scopes": {"payments": "make and read quick-payments"}}}},
            "adminToken": {"type": "http", "scheme": "bearer"}}},
    }
