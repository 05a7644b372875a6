"""RuleRegistry: proposing validates and numbers versions, activation and rollback
follow the activation history, every command is audited, and the whole registry
survives a JSON round trip (as the ledger stores it in PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from fraud import RuleError, RuleRegistry
from fraud.registry import RegistryError

V1 = 'rule a { action review description "v1" when amount > 100 }'
V2 = 'rule b { action block description "v2" when amount > 200 }'
V3 = 'rule c { action block description "v3" when amount > 300 }'


def make_registry() -> RuleRegistry:
    registry = RuleRegistry()
    assert registry.propose(V1, "alice", 1_000) == 1
    assert registry.propose(V2, "bob", 2_000) == 2
    assert registry.propose(V3, "carol", 3_000) == 3
    return registry


def test_nothing_is_active_until_activated() -> None:
    registry = make_registry()
    assert registry.active_version is None and registry.active_ruleset is None
    registry.activate(2, "alice", 4_000)
    assert registry.active_version == 2
    assert registry.active_ruleset is not None and registry.active_ruleset.rule_ids == ("b",)


def test_invalid_text_is_rejected_and_no_version_is_created() -> None:
    registry = make_registry()
    with pytest.raises(RuleError) as caught:
        registry.propose('rule x { action review description "x" when amont > 1 }', "mallory", 5_000)
    assert str(caught.value).startswith("rules-v4:1:45: unknown attribute")
    assert [v["version"] for v in registry.versions()] == [1, 2, 3]
    assert registry.propose(V1, "alice", 6_000) == 4  # numbering unaffected by the failure


def test_rollback_returns_to_the_previously_active_version() -> None:
    registry = make_registry()
    registry.activate(1, "alice", 4_000)
    registry.activate(3, "bob", 5_000)
    registry.activate(2, "carol", 6_000)
    assert registry.rollback("dave", 7_000).rule_ids == ("c",)
    assert registry.active_version == 3
    registry.rollback("dave", 8_000)
    assert registry.active_version == 1
    with pytest.raises(RegistryError, match="no previously active version"):
        registry.rollback("dave", 9_000)
    assert registry.active_version == 1


def test_activating_unknown_version_fails_and_reactivation_is_idempotent() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="unknown rule-set version 9"):
        registry.activate(9, "alice", 1)
    registry.activate(1, "alice", 2)
    registry.activate(1, "alice", 3)
    assert [entry["action"] for entry in registry.audit()].count("activate") == 1


def test_audit_and_versions_describe_history() -> None:
    registry = make_registry()
    registry.activate(1, "alice", 4_000)
    registry.activate(2, "bob", 5_000)
    registry.rollback("carol", 6_000)
    assert registry.audit() == [
        {"action": "propose", "version": 1, "author": "alice", "at_ms": 1_000},
        {"action": "propose", "version": 2, "author": "bob", "at_ms": 2_000},
        {"action": "propose", "version": 3, "author": "carol", "at_ms": 3_000},
        {"action": "activate", "version": 1, "author": "alice", "at_ms": 4_000},
        {"action": "activate", "version": 2, "author": "bob", "at_ms": 5_000},
        {"action": "rollback", "version": 1, "author": "carol", "at_ms": 6_000},
    ]
    versions = registry.versions()
    assert [(v["version"], v["author"], v["created_at_ms"], v["active"], v["last_activated_at_ms"]) for v in versions] == [
        (1, "alice", 1_000, True, 6_000),
        (2, "bob", 2_000, False, 5_000),
        (3, "carol", 3_000, False, None),
    ]
    with pytest.raises(RegistryError, match="author"):
        registry.propose(V1, "", 1)


def test_serialisation_round_trip_preserves_everything() -> None:
    registry = make_registry()
    registry.activate(1, "alice", 4_000)
    registry.activate(3, "bob", 5_000)
    restored = RuleRegistry.from_dict(json.loads(json.dumps(registry.to_dict())))
    assert restored.to_dict() == registry.to_dict()
    assert restored.versions() == registry.versions()
    assert restored.active_version == 3
    assert restored.active_ruleset is not None and restored.active_ruleset.rule_ids == ("c",)
    assert restored.text(2) == V2
    # History survives too: rollback after restore goes back to version 1.
    restored.rollback("carol", 6_000)
    assert restored.active_version == 1


def test_from_dict_rejects_unknown_format() -> None:
    with pytest.raises(RegistryError, match="unsupported registry format"):
        RuleRegistry.from_dict({"format": 99, "versions": [], "activation_stack": [], "audit": []})
