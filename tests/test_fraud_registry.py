"""RuleRegistry: a version is the sha256 of its canonical text, staging validates and is
idempotent, activation and rollback follow the activation history (guarded variants for
the gateway's coordinator), every command is audited, the whole registry survives a JSON
round trip (as the ledger stores it in PostgreSQL), and a stored version that no longer
builds is reported instead of stopping the load."""

from __future__ import annotations

import hashlib
import json

import pytest

from fraud import RuleError, RuleRegistry
from fraud.registry import RegistryConflict, RegistryError, canonical_text, version_of

V1 = 'rule a { action review description "v1" when amount > 100 }'
V2 = 'rule b { action block description "v2" when amount > 200 }'
V3 = 'rule c { action block description "v3" when amount > 300 }'
H1, H2, H3 = version_of(V1), version_of(V2), version_of(V3)
BROKEN = 'rule x { action review description "x" when amont > 1 }\n'


def make_registry() -> RuleRegistry:
    registry = RuleRegistry()
    assert registry.propose(V1, "alice", 1_000) == H1
    assert registry.propose(V2, "bob", 2_000) == H2
    assert registry.propose(V3, "carol", 3_000) == H3
    return registry


def test_version_is_the_hash_of_the_canonical_text() -> None:
    assert H1 == hashlib.sha256((V1 + "\n").encode()).hexdigest()
    assert version_of(V1 + "\r\n\r\n  \n") == H1
    assert canonical_text("a\r\nb  \n\n") == "a\nb\n"
    assert len({H1, H2, H3}) == 3


def test_staging_the_same_text_again_is_the_same_version() -> None:
    registry = make_registry()
    assert registry.stage(V1, "dave", 9_000) == (H1, False)
    assert registry.stage(V1.replace("\n", "\r\n") + "\n\n", "dave", 9_000) == (H1, False)
    assert [v["version"] for v in registry.versions()] == [H1, H2, H3]
    assert [e["action"] for e in registry.audit()].count("stage") == 3
    assert registry.versions()[0]["author"] == "alice"  # the first stager stays the author


def test_nothing_is_active_until_activated() -> None:
    registry = make_registry()
    assert registry.active_version is None and registry.active_ruleset is None
    registry.activate(H2, "alice", 4_000)
    assert registry.active_version == H2 == registry.enforced_version
    assert registry.active_ruleset is not None and registry.active_ruleset.rule_ids == ("b",)


def test_invalid_text_is_rejected_and_no_version_is_created() -> None:
    registry = make_registry()
    with pytest.raises(RuleError) as caught:
        registry.stage(BROKEN, "mallory", 5_000, filename="x.rules")
    assert str(caught.value).startswith("x.rules:1:45: unknown attribute")
    assert [v["version"] for v in registry.versions()] == [H1, H2, H3]
    assert not registry.has(version_of(BROKEN))


def test_rollback_returns_to_the_previously_active_version() -> None:
    registry = make_registry()
    registry.activate(H1, "alice", 4_000)
    registry.activate(H3, "bob", 5_000)
    registry.activate(H2, "carol", 6_000)
    assert registry.rollback("dave", 7_000).rule_ids == ("c",)
    assert registry.active_version == H3
    registry.rollback("dave", 8_000)
    assert registry.active_version == H1
    with pytest.raises(RegistryError, match="no previously active version"):
        registry.rollback("dave", 9_000)
    assert registry.active_version == H1


def test_activating_unknown_version_fails_and_reactivation_is_idempotent() -> None:
    registry = make_registry()
    with pytest.raises(RegistryError, match="unknown rule-set version"):
        registry.activate("0" * 64, "alice", 1)
    registry.activate(H1, "alice", 2)
    registry.activate(H1, "alice", 3)
    registry.activate(H1, "alice", 3, expect_active="something else")  # already done: no conflict
    assert [entry["action"] for entry in registry.audit()].count("activate") == 1


def test_guarded_activate_and_rollback_refuse_a_state_they_did_not_expect() -> None:
    registry = make_registry()
    registry.activate(H1, "alice", 1)
    with pytest.raises(RegistryConflict):
        registry.activate(H2, "bob", 2, expect_active=H3)
    assert registry.active_version == H1
    registry.activate(H2, "bob", 3, expect_active=H1)
    # Undo of that activation: pops once, and a repeat is a no-op.
    registry.rollback("bob", 4, expect_from=H2, expect_to=H1, undo=True)
    registry.rollback("bob", 5, expect_from=H2, expect_to=H1, undo=True)
    assert registry.active_version == H1 and registry.previous_version is None
    assert registry.audit()[-1]["action"] == "undo"
    # A guarded rollback whose idea of the history is wrong changes nothing.
    registry.activate(H3, "carol", 6)
    with pytest.raises(RegistryConflict):
        registry.rollback("dave", 7, expect_from=H3, expect_to=H2)
    with pytest.raises(RegistryConflict):
        registry.rollback("dave", 7, expect_from=H2, expect_to=H1)
    assert registry.active_version == H3


def test_audit_and_versions_describe_history() -> None:
    registry = make_registry()
    registry.activate(H1, "alice", 4_000)
    registry.activate(H2, "bob", 5_000)
    registry.rollback("carol", 6_000)
    assert registry.audit() == [
        {"action": "stage", "version": H1, "author": "alice", "at_ms": 1_000},
        {"action": "stage", "version": H2, "author": "bob", "at_ms": 2_000},
        {"action": "stage", "version": H3, "author": "carol", "at_ms": 3_000},
        {"action": "activate", "version": H1, "author": "alice", "at_ms": 4_000},
        {"action": "activate", "version": H2, "author": "bob", "at_ms": 5_000},
        {"action": "rollback", "version": H1, "author": "carol", "at_ms": 6_000},
    ]
    versions = registry.versions()
    assert [
        (v["version"], v["author"], v["created_at_ms"], v["active"], v["last_activated_at_ms"]) for v in versions
    ] == [
        (H1, "alice", 1_000, True, 6_000),
        (H2, "bob", 2_000, False, 5_000),
        (H3, "carol", 3_000, False, None),
    ]
    assert all(v["digest"] == v["version"] and v["error"] is None for v in versions)
    with pytest.raises(RegistryError, match="author"):
        registry.propose(V1, "", 1)


def test_serialisation_round_trip_preserves_everything() -> None:
    registry = make_registry()
    registry.activate(H1, "alice", 4_000)
    registry.activate(H3, "bob", 5_000)
    restored = RuleRegistry.from_dict(json.loads(json.dumps(registry.to_dict())))
    assert restored.to_dict() == registry.to_dict()
    assert restored.versions() == registry.versions()
    assert restored.active_version == H3
    assert restored.active_ruleset is not None and restored.active_ruleset.rule_ids == ("c",)
    assert restored.text(H2) == V2 + "\n"
    # History survives too: rollback after restore goes back to version 1.
    restored.rollback("carol", 6_000)
    assert restored.active_version == H1


def test_a_stored_version_that_no_longer_builds_is_reported_not_raised() -> None:
    registry = make_registry()
    registry.activate(H1, "alice", 4_000)
    registry.activate(H2, "bob", 5_000)
    stored = registry.to_dict()
    # As if the language changed under a stored text (library upgrade), or it was damaged.
    stored["versions"].append({"version": version_of(BROKEN), "text": BROKEN, "author": "old", "created_at_ms": 6_000})
    stored["activation_stack"].append(version_of(BROKEN))
    stored["versions"][1]["text"] = V2 + "# edited behind our back\n"
    restored = RuleRegistry.from_dict(json.loads(json.dumps(stored)))
    assert restored.active_version == version_of(BROKEN)
    # Neither the broken top nor the damaged H2 builds: enforce the newest that does.
    assert restored.enforced_version == H1
    assert restored.active_ruleset is not None and restored.active_ruleset.rule_ids == ("a",)
    problems = {p["version"]: p["error"] for p in restored.problems()}
    assert "unknown attribute" in problems[version_of(BROKEN)]
    assert "does not match" in problems[H2]
    with pytest.raises(RegistryError, match="does not build"):
        restored.activate(version_of(BROKEN), "eve", 7_000)
    with pytest.raises(RuleError):
        restored.stage(BROKEN, "eve", 7_000)
    # Rolling back from the broken version lands on H2, which does not build either: refused.
    with pytest.raises(RegistryError, match="does not build"):
        restored.rollback("eve", 7_000)
    restored.activate(H3, "eve", 8_000)
    assert restored.enforced_version == restored.active_version == H3


def test_format_1_is_migrated_and_drifted_duplicates_collapse() -> None:
    old = {
        "format": 1,
        "versions": [
            {"version": 1, "text": V1, "author": "a", "created_at_ms": 1},
            {"version": 2, "text": V2, "author": "b", "created_at_ms": 2},
            {"version": 3, "text": V2, "author": "b", "created_at_ms": 3},
        ],  # a retried propose
        "activation_stack": [1, 3],
        "audit": [
            {"action": "propose", "version": 1, "author": "a", "at_ms": 1},
            {"action": "activate", "version": 3, "author": "b", "at_ms": 3},
        ],
    }
    registry = RuleRegistry.from_dict(old)
    assert [v["version"] for v in registry.versions()] == [H1, H2]
    assert registry.active_version == H2 and registry.previous_version == H1
    assert registry.audit()[0] == {"action": "stage", "version": H1, "author": "a", "at_ms": 1}
    assert registry.to_dict()["format"] == 2


def test_from_dict_rejects_unknown_format() -> None:
    with pytest.raises(RegistryError, match="unsupported registry format"):
        RuleRegistry.from_dict({"format": 99, "versions": [], "activation_stack": [], "audit": []})


def test_registry_is_bounded_by_dropping_versions_outside_the_history(monkeypatch: pytest.MonkeyPatch) -> None:
    import fraud.registry as registry_module

    monkeypatch.setattr(registry_module, "VERSIONS_MAX", 3)
    registry = make_registry()
    registry.activate(H2, "alice", 4_000)
    v4 = 'rule d { action block description "v4" when amount > 400 }'
    registry.stage(v4, "dave", 5_000)
    # H1 (oldest, never activated) made room; the active H2 stays.
    assert [v["version"] for v in registry.versions()] == [H2, H3, version_of(v4)]
    registry.activate(H3, "alice", 6_000)
    registry.activate(version_of(v4), "alice", 7_000)
    with pytest.raises(RegistryError, match="registry is full"):
        registry.stage(V1, "alice", 8_000)
    assert [v["version"] for v in registry.versions()] == [H2, H3, version_of(v4)]
