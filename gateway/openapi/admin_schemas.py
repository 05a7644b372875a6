"""The schemas of what the admin API answers: health with its reasons, rate limits, partners
(credentials, cut-off state, audit), accounts, and the fraud filter's rule sets, lists,
alerts and decisions."""

from __future__ import annotations

from typing import Any

from ledger.slot_move import Phase

from .operations import _object, _ref
from .patterns import (
    ACCOUNT_ID,
    AMOUNT_OUT,
    CURRENCY,
    DATE_TIME,
    DATE_TIME_OR_NULL,
    RULE_SUMMARY,
    SIGNED_AMOUNT_OUT,
    VERSION_OR_NULL,
)


def admin_schemas() -> dict[str, Any]:
    """The admin answers' components."""
    return {
        # GET /admin/v1/health: the same state with its reasons and the details.
        "AdminHealth": _object(
            ["status", "reasons", "shards", "services"],
            {
                "status": {"enum": ["ready", "degraded", "not ready"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "shards": {
                    "type": "array",
                    "items": _object(
                        ["shard", "ready"],
                        {
                            "shard": {"type": "integer", "minimum": 0},
                            "ready": {"type": "boolean"},
                            "error": {"type": "string"},
                            # what the shard's fraud filter enforces (null with --no-rules), see RuleSetState
                            "fraud": {"type": ["object", "null"]},
                            # the relay's in-process supervision: restarts, crash loop, last error
                            "relay": {"type": ["object", "null"]},
                        },
                    ),
                },
                # Under `quickpay up`: the supervisor's children (state, pid, restarts, crash loop).
                "children": {"type": "array", "items": {"type": "object"}},
                "ha_members": {"type": "array", "items": {"type": "object"}},
                "supervisor": {"type": "object"},
                # notifier, monitor (the supervisor's view) and relay-<shard> (the shard's).
                "services": {"type": "object"},
            },
        ),
        # GET /admin/v1/shards (gateway/routes/shards.py): the slot map and the moves.
        "ShardsStatus": _object(
            ["version", "written_at", "slot_count", "gateway_held_version", "shards", "moves"],
            {
                "version": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "description": "the control map's version; null: a ledger without a slot map (its shard count"
                    " does not divide slot_count), which routes every id by hash and cannot move slots",
                },
                "written_at": DATE_TIME_OR_NULL,
                "slot_count": {"type": "integer", "minimum": 1},
                "gateway_held_version": {"type": ["integer", "null"], "minimum": 1},
                "shards": {
                    "type": "array",
                    "items": _object(
                        ["shard", "slots", "held_version", "error"],
                        {
                            "shard": {"type": "integer", "minimum": 0},
                            "slots": {"type": ["integer", "null"], "minimum": 0},
                            "held_version": {"type": ["integer", "null"], "minimum": 1},
                            "error": {"type": ["string", "null"]},
                        },
                    ),
                },
                "moves": {
                    "type": "array",
                    "items": _object(
                        [
                            "slot",
                            "source_shard",
                            "target_shard",
                            "from_version",
                            "to_version",
                            "phase",
                            "started_at",
                            "updated_at",
                        ],
                        {
                            "slot": {"type": "integer", "minimum": 0},
                            "source_shard": {"type": "integer", "minimum": 0},
                            "target_shard": {"type": "integer", "minimum": 0},
                            "from_version": {"type": "integer", "minimum": 1},
                            "to_version": {"type": "integer", "minimum": 1},
                            "phase": {"enum": [phase.value for phase in Phase if phase != Phase.DONE]},
                            "started_at": DATE_TIME,
                            "updated_at": DATE_TIME,
                        },
                    ),
                },
            },
        ),
        # GET /admin/v1/ha (gateway/patroni.py): the console's HA members table.
        "HaMembers": _object(
            ["generated_at", "mode", "error", "shards"],
            {
                "generated_at": DATE_TIME,
                "mode": {
                    "enum": ["single", "patroni", "external", "unknown"],
                    "description": "external: databases quickpay up does not run (--dsn); unknown: see error",
                },
                "error": {"type": ["string", "null"]},
                "shards": {
                    "type": "array",
                    "items": _object(
                        ["shard", "mode", "view_from", "leader", "members"],
                        {
                            "shard": {"type": "integer", "minimum": 0},
                            "mode": {"enum": ["single", "patroni"]},
                            "view_from": {"type": ["string", "null"], "description": "the member whose view this is"},
                            "leader": {"type": ["string", "null"]},
                            "members": {
                                "type": "array",
                                "items": _object(
                                    [
                                        "name",
                                        "role",
                                        "state",
                                        "lag_bytes",
                                        "lag_unknown",
                                        "timeline",
                                        "rest_host",
                                        "rest_port",
                                        "api",
                                    ],
                                    {
                                        "name": {"type": ["string", "null"]},
                                        "role": {
                                            "type": "string",
                                            "description": "leader, sync_standby, replica... (Patroni's); "
                                            "unknown (no member lists it); single (no Patroni)",
                                        },
                                        "state": {
                                            "type": ["string", "null"],
                                            "description": "running, streaming... or unreachable",
                                        },
                                        "lag_bytes": {"type": ["integer", "null"], "minimum": 0},
                                        "lag_unknown": {"type": "boolean"},
                                        "timeline": {"type": ["integer", "null"]},
                                        "rest_host": {"type": ["string", "null"]},
                                        "rest_port": {"type": ["integer", "null"]},
                                        "api": {
                                            "type": ["string", "null"],
                                            "description": "answered, or unreachable: why",
                                        },
                                    },
                                ),
                            },
                        },
                    ),
                },
            },
        ),
        # GET /admin/v1/reconciliation (gateway/recon_status.py): the console's reconciliation table.
        "ReconciliationStatus": _object(
            ["generated_at", "close_grace_s", "days"],
            {
                "generated_at": DATE_TIME,
                "close_grace_s": {"type": "integer", "minimum": 0, "description": "a day closes this long after"},
                "days": {
                    "type": "array",
                    "items": _object(
                        ["day", "closed", "closes_at", "summary_state", "summary", "summary_as_of", "error"],
                        {
                            "day": {"type": "string", "format": "date"},
                            "closed": {"type": "boolean", "description": "true: the day's files are final"},
                            "closes_at": DATE_TIME,
                            "summary_state": {"enum": ["read", "reading", "error"]},
                            "summary": {
                                "oneOf": [
                                    {"type": "null"},
                                    _object(
                                        ["rows", "totals", "settlement_net"],
                                        {
                                            "rows": {"type": "integer", "minimum": 0},
                                            "totals": {
                                                "type": "array",
                                                "items": _object(
                                                    ["kind", "currency", "count", "total", "total_minor"],
                                                    {
                                                        "kind": {"enum": ["payment", "payment_to_customer", "refund"]},
                                                        "currency": CURRENCY,
                                                        "count": {"type": "integer", "minimum": 1},
                                                        "total": AMOUNT_OUT,
                                                        "total_minor": {"type": "integer", "minimum": 1},
                                                    },
                                                ),
                                            },
                                            "settlement_net": {
                                                "type": "array",
                                                "items": _object(
                                                    ["currency", "net", "net_minor"],
                                                    {
                                                        "currency": CURRENCY,
                                                        "net": SIGNED_AMOUNT_OUT,
                                                        "net_minor": {"type": "integer"},
                                                    },
                                                ),
                                            },
                                        },
                                    ),
                                ]
                            },
                            "summary_as_of": DATE_TIME_OR_NULL,
                            "error": {"type": ["string", "null"]},
                        },
                    ),
                },
            },
        ),
        "RateLimitSetting": _object(
            ["partner_id", "requests_per_s", "burst", "applies_within_s"],
            {
                "partner_id": {"type": "string"},
                "requests_per_s": {"type": "integer"},
                "burst": {"type": "integer"},
                "applies_within_s": {"type": "number"},
            },
        ),
        "PartnerCredentials": _object(
            ["partner_id", "client_id", "client_secret", "settlement_account", "currency"],
            {
                "partner_id": {"type": "string"},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
                "settlement_account": {"type": "string"},
                "currency": CURRENCY,
            },
        ),
        "PartnerCutoff": _object(
            [
                "partner_id",
                "disabled",
                "disabled_at",
                "tokens_valid_after",
                "previous_secret_valid_until",
                "applies_within_s",
            ],
            {
                "partner_id": {"type": "string"},
                "disabled": {"type": "boolean"},
                "disabled_at": {"type": ["string", "null"], "format": "date-time"},
                "tokens_valid_after": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "tokens issued at or before this instant are refused",
                },
                "previous_secret_valid_until": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "the previous client secret's overlap end",
                },
                "applies_within_s": {"type": "number", "description": "every gateway process applies it within"},
                "action": {"enum": ["disable", "enable", "rotate_secret", "retire_secret", "revoke_tokens"]},
                "changed": {"type": "boolean", "description": "false: already so, nothing recorded"},
                "client_secret": {"type": "string", "description": "rotate-secret only: shown once"},
                "name": {"type": "string"},
                "settlement_account": {"type": "string"},
                "created_at": DATE_TIME,
            },
        ),
        # GET /admin/v1/partners: every partner, by id (the console's partners table).
        "PartnerList": _object(
            ["partners", "next_cursor"],
            {
                "partners": {
                    "type": "array",
                    "items": _object(
                        ["partner_id", "name", "created_at", "disabled", "rate_limit", "pending_agreements"],
                        {
                            "partner_id": {"type": "string"},
                            "name": {"type": "string"},
                            "created_at": DATE_TIME,
                            "disabled": {"type": "boolean"},
                            "rate_limit": _object(
                                ["requests_per_s", "burst", "override"],
                                {
                                    "requests_per_s": {"type": "integer", "minimum": 1},
                                    "burst": {"type": "integer", "minimum": 1},
                                    "override": {"type": "boolean", "description": "false: the gateways' default"},
                                },
                            ),
                            "pending_agreements": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "agreements AwaitingAuthorisation and not expired, over every shard",
                            },
                        },
                    ),
                },
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "PartnerAudit": _object(
            ["partner_id", "entries", "next_cursor"],
            {
                "partner_id": {"type": "string"},
                "entries": {
                    "type": "array",
                    "items": _object(
                        ["seq", "action", "actor", "at", "details"],
                        {
                            "seq": {"type": "integer"},
                            "action": {"type": "string"},
                            "actor": {"type": "string"},
                            "at": DATE_TIME,
                            "details": {"type": "object"},
                        },
                    ),
                },
                "next_cursor": {"type": ["string", "null"]},
            },
        ),
        "Account": _object(
            ["account_id", "currency", "balance"],
            {"account_id": ACCOUNT_ID, "currency": CURRENCY, "balance": AMOUNT_OUT, "phone": {"type": "string"}},
        ),
        # Rule-set versions are content hashes (sha256 of the canonical text); see
        # gateway/fraud_rollout.py. Per-shard entries stay open: they carry diagnostics.
        "RuleSets": _object(
            ["active_version", "enforced_version", "consistent", "degraded_shards", "shards"],
            {**RULE_SUMMARY, "shards": {"type": "array", "items": _ref("RuleSetState")}},
        ),
        "RuleSetState": {
            "type": "object",
            "properties": {
                "active_version": VERSION_OR_NULL,
                "enforced_version": VERSION_OR_NULL,
                "previous_version": VERSION_OR_NULL,
                "degraded": {"type": "boolean"},
                "versions": {"type": "array", "items": {"type": "object"}},
                "audit": {"type": "array", "items": {"type": "object"}},
            },
        },
        "RuleChange": _object(
            ["version", "active_version", "enforced_version", "consistent", "degraded_shards", "shards"],
            {
                "version": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
                **RULE_SUMMARY,
                "shards": {"type": "array", "items": _ref("RuleSetState")},
            },
        ),
        "Lists": _object(
            ["lists"],
            {"lists": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
        ),
        "Alerts": _object(["alerts"], {"alerts": {"type": "array", "items": {"type": "object"}}}),
        "Decisions": _object(["payments"], {"payments": {"type": "array", "items": _ref("Payment")}}),
    }
