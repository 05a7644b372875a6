"""The admin API's paths: partners, accounts, health and the fraud filter."""

from __future__ import annotations

from typing import Any

from .operations import AUTHOR, LIMIT, _link, _op, _path_param
from .patterns import ACCOUNT_ID_PATTERN, IDENTIFIER_PATTERN, VERSION_PATTERN


def partner_creation_paths() -> dict[str, Any]:
    """Creating a partner."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/admin/v1/partners": {
            "get": _op(
                "listPartners",
                "Every partner by id, a page at a time: enabled or disabled, rate limit, pending agreements",
                security="admin",
                ok=(200, "OK", "PartnerList"),
                errors=(),
                params=[
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_\-]{1,64}$"},
                        "description": "next_cursor of an earlier page",
                    },
                    LIMIT,
                ],
            ),
            "post": _op(
                "createPartner",
                "Create a partner; returns its client credentials once",
                security="admin",
                body="PartnerRequest",
                ok=(201, "Created", "PartnerCredentials"),
                errors=(),
                links={
                    "GetSettlementBalance": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/settlement_account"}
                    )
                },
            ),
        },
    }


def admin_paths() -> dict[str, Any]:
    """Partners' rate limits, cut-offs and audit; customer accounts; health with its reasons."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/admin/v1/partners/{partner_id}/rate-limit": {
            "put": _op(
                "setPartnerRateLimit",
                "Override the default rate limit of one partner (every gateway process applies it within 5 s)",
                security="admin",
                body="RateLimitRequest",
                ok=(200, "OK", "RateLimitSetting"),
                errors=(404,),
                params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
            )
        },
        "/admin/v1/partners/{partner_id}": {
            "get": _op(
                "getPartner",
                "A partner and its cut-off state",
                security="admin",
                ok=(200, "OK", "PartnerCutoff"),
                errors=(404,),
                params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
            )
        },
        **{
            f"/admin/v1/partners/{{partner_id}}/{segment}": {
                "post": _op(
                    operation_id,
                    summary,
                    security="admin",
                    body=body,
                    body_required=False,
                    ok=(200, "OK", "PartnerCutoff"),
                    errors=(404,),
                    params=[_path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$")],
                )
            }
            for segment, operation_id, summary, body in (
                (
                    "disable",
                    "disablePartner",
                    "Refuse the partner's tokens (403 QP.Partner.Disabled on every gateway "
                    "process within 1 s) and issue it none; accepted payments settle",
                    "PartnerActionRequest",
                ),
                ("enable", "enablePartner", "Let a disabled partner back in", "PartnerActionRequest"),
                (
                    "rotate-secret",
                    "rotatePartnerSecret",
                    "A new client secret (in this answer only); the previous one stays valid for overlap_s",
                    "PartnerSecretRotationRequest",
                ),
                (
                    "retire-secret",
                    "retirePartnerSecret",
                    "End the previous client secret's overlap now",
                    "PartnerActionRequest",
                ),
                (
                    "revoke-tokens",
                    "revokePartnerTokens",
                    "Refuse every token issued to the partner until now (on every gateway process within 1 s)",
                    "PartnerActionRequest",
                ),
            )
        },
        "/admin/v1/partners/{partner_id}/audit": {
            "get": _op(
                "getPartnerAudit",
                "Who cut the partner off or let it back in, and when (oldest first)",
                security="admin",
                ok=(200, "OK", "PartnerAudit"),
                errors=(404,),
                params=[
                    _path_param("partner_id", r"^[A-Za-z0-9_\-]{1,64}$"),
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "description": "next_cursor of an earlier page",
                    },
                    LIMIT,
                ],
            )
        },
        "/admin/v1/accounts": {
            "post": _op(
                "openAccount",
                "Open a customer account (the body is optional: CNY by default)",
                security="admin",
                body="AccountRequest",
                body_required=False,
                ok=(201, "Created", "Account"),
                errors=(),
                links={
                    "FundAccount": _link(
                        "fundAccount",
                        parameters={"account_id": "$response.body#/account_id"},
                        body={"currency": "$response.body#/currency"},
                    ),
                    "GetAccountBalanceAdmin": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/account_id"}
                    ),
                    "CreateAgreement": _link(
                        "createAgreement",
                        body={"debtor_account": "$response.body#/account_id", "currency": "$response.body#/currency"},
                    ),
                },
            )
        },
        "/admin/v1/accounts/{account_id}/fundings": {
            "post": _op(
                "fundAccount",
                "Fund an account from the bank funding account (a double-entry transfer)",
                security="admin",
                body="FundingRequest",
                ok=(201, "Transfer (new or replayed)", "Transfer"),
                idempotent=True,
                errors=(404, 409, 422),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
                links={
                    "GetAccountBalanceAdmin": _link(
                        "getAccountBalanceAdmin", parameters={"account_id": "$response.body#/credit_account"}
                    )
                },
            )
        },
        "/admin/v1/accounts/{account_id}/balance": {
            "get": _op(
                "getAccountBalanceAdmin",
                "Any account's balance",
                security="admin",
                ok=(200, "OK", "Balance"),
                errors=(404,),
                params=[_path_param("account_id", ACCOUNT_ID_PATTERN)],
            )
        },
        "/admin/v1/ha": {
            "get": _op(
                "getHaMembers",
                "Every shard's PostgreSQL members as Patroni sees them (role, state, replication lag in "
                "bytes, timeline) under `quickpay up --ha`; role single for a shard of one server. A "
                "member that does not answer within 0.5 s is unreachable; read at most once a second",
                security="admin",
                errors=(),
                shards=False,
                ok=(200, "OK", "HaMembers"),
            )
        },
        "/admin/v1/shards": {
            "get": _op(
                "getShards",
                "The slot map (issue 21) as the control database holds it: its version, slots per shard, "
                "the version each shard worker and this gateway worker act on (null with an error for a "
                "shard that does not answer within 2 s), and the slot moves in progress",
                security="admin",
                errors=(),
                ok=(200, "OK", "ShardsStatus"),
            )
        },
        "/admin/v1/reconciliation": {
            "get": _op(
                "getReconciliationStatus",
                "The last 3 UTC days: closed (files final) or open, and what every partner's file of the "
                "day holds together (rows, count and total per kind and currency, settlement net); a "
                "closed day is counted once, the open day at most once a minute",
                security="admin",
                errors=(),
                shards=False,
                ok=(200, "OK", "ReconciliationStatus"),
            )
        },
        "/admin/v1/health": {
            "get": _op(
                "getHealth",
                "Readiness with its reasons and details: shards, supervised children and their "
                "restarts, background services (notifier, monitor, relays), HA members, fraud "
                "rule-set versions",
                security="admin",
                errors=(),
                shards=False,
                ok=(200, "OK", "AdminHealth"),
            )
        },
    }


def fraud_paths() -> dict[str, Any]:
    """The fraud filter's rule sets, lists, alerts and decisions."""
    # One entry per operation, spelled out: entries look alike (the duplicates tool pairs them by
    # shape) but each is the document's own data for one route; generating them in a loop would
    # hide what the document says about each operation.
    return {
        "/admin/v1/fraud/rules": {
            "get": _op(
                "getFraudRules",
                "Rule set versions and audit trail per shard",
                security="admin",
                errors=(409,),
                ok=(200, "OK", "RuleSets"),
            ),
            "post": _op(
                "proposeFraudRules",
                "Validate a new rule set version and (by default) activate it everywhere",
                security="admin",
                body="RulesRequest",
                ok=(201, "Created", "RuleChange"),
                errors=(409, 422, 503),
            ),
        },
        "/admin/v1/fraud/rules/{version}/activate": {
            "post": _op(
                "activateFraudRules",
                "Activate a stored version on every shard, or on none",
                security="admin",
                ok=(200, "OK", "RuleChange"),
                errors=(404, 409, 422),
                params=[_path_param("version", VERSION_PATTERN), AUTHOR],
            )
        },
        "/admin/v1/fraud/rules/rollback": {
            "post": _op(
                "rollbackFraudRules",
                "Return every shard to the previously active version",
                security="admin",
                ok=(200, "OK", "RuleChange"),
                errors=(409, 422),
                params=[AUTHOR],
            )
        },
        "/admin/v1/fraud/lists": {
            "get": _op("getFraudLists", "Named lists", security="admin", ok=(200, "OK", "Lists"), errors=(409,))
        },
        "/admin/v1/fraud/lists/{name}": {
            "post": _op(
                "changeFraudList",
                "Add or remove list values at runtime",
                security="admin",
                body="ListChangeRequest",
                ok=(200, "OK", "Lists"),
                errors=(409, 422),
                params=[_path_param("name", IDENTIFIER_PATTERN)],
            )
        },
        "/admin/v1/fraud/alerts": {
            "get": _op(
                "listFraudAlerts",
                "Alerts raised by the post-event monitor",
                security="admin",
                ok=(200, "OK", "Alerts"),
                errors=(),
            )
        },
        "/admin/v1/fraud/decisions": {
            "get": _op(
                "listFraudDecisions",
                "Recorded payments by fraud decision and/or rule id, newest first",
                security="admin",
                ok=(200, "OK", "Decisions"),
                errors=(400,),
                params=[
                    {
                        "name": "decision",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["allow", "review", "block"]},
                    },
                    {
                        "name": "rule_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN},
                    },
                    LIMIT,
                ],
            )
        },
    }
