"""Versioned rule sets with an audit trail; pure and in memory, persisted by the ledger.

The registry does no I/O. The ledger stores `to_dict()` (JSON-able) in PostgreSQL and
rebuilds with `RuleRegistry.from_dict()`, which re-parses every stored version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fraud.ruleset import RuleSet, parse_rules

__all__ = ["RuleRegistry", "RegistryError"]

REGISTRY_FORMAT = 1
VERSIONS_MAX = 10_000
AUDIT_ENTRIES_MAX = 100_000
AUTHOR_LENGTH_MAX = 128


class RegistryError(ValueError):
    """An operation on the registry is not possible (unknown version, nothing to roll back to)."""


@dataclass(slots=True)
class _Version:
    version: int
    text: str
    author: str
    created_at_ms: int
    ruleset: RuleSet


class RuleRegistry:
    def __init__(self) -> None:
        self._versions: dict[int, _Version] = {}
        # Versions in activation order; the last is active. Rollback pops it.
        self._activation_stack: list[int] = []
        self._audit: list[dict[str, Any]] = []

    # -- commands --------------------------------------------------------------------

    def propose(self, text: str, author: str, at_ms: int) -> int:
        """Store a new version after validating it; raises RuleError if it does not parse."""
        self._check_author(author)
        if len(self._versions) >= VERSIONS_MAX:
            raise RegistryError(f"registry holds {VERSIONS_MAX} versions already")
        version = max(self._versions, default=0) + 1
        ruleset = parse_rules(text, f"rules-v{version}")
        self._versions[version] = _Version(version, text, author, at_ms, ruleset)
        self._log("propose", version, author, at_ms)
        return version

    def activate(self, version: int, author: str, at_ms: int) -> RuleSet:
        self._check_author(author)
        if version not in self._versions:
            raise RegistryError(f"unknown rule-set version {version}")
        if self.active_version == version:
            # Idempotent so an at-least-once admin command can be retried safely.
            return self._versions[version].ruleset
        self._activation_stack.append(version)
        self._log("activate", version, author, at_ms)
        return self._versions[version].ruleset

    def rollback(self, author: str, at_ms: int) -> RuleSet:
        """Re-activate the version that was active before the current one."""
        self._check_author(author)
        if len(self._activation_stack) < 2:
            raise RegistryError("no previously active version to roll back to")
        self._activation_stack.pop()
        version = self._activation_stack[-1]
        self._log("rollback", version, author, at_ms)
        return self._versions[version].ruleset

    # -- queries ---------------------------------------------------------------------

    @property
    def active_version(self) -> int | None:
        return self._activation_stack[-1] if self._activation_stack else None

    @property
    def active_ruleset(self) -> RuleSet | None:
        version = self.active_version
        return None if version is None else self._versions[version].ruleset

    def ruleset(self, version: int) -> RuleSet:
        if version not in self._versions:
            raise RegistryError(f"unknown rule-set version {version}")
        return self._versions[version].ruleset

    def text(self, version: int) -> str:
        return self.ruleset(version).text

    def versions(self) -> list[dict[str, Any]]:
        active = self.active_version
        activated_at: dict[int, int] = {}
        for entry in self._audit:
            if entry["action"] in ("activate", "rollback"):
                activated_at[entry["version"]] = entry["at_ms"]
        return [
            {
                "version": item.version,
                "author": item.author,
                "created_at_ms": item.created_at_ms,
                "active": item.version == active,
                "last_activated_at_ms": activated_at.get(item.version),
                "rule_count": len(item.ruleset.rules),
                "digest": item.ruleset.digest,
            }
            for item in sorted(self._versions.values(), key=lambda v: v.version)
        ]

    def audit(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self._audit]

    # -- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REGISTRY_FORMAT,
            "versions": [
                {"version": v.version, "text": v.text, "author": v.author, "created_at_ms": v.created_at_ms}
                for v in sorted(self._versions.values(), key=lambda v: v.version)
            ],
            "activation_stack": list(self._activation_stack),
            "audit": self.audit(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleRegistry:
        if data.get("format") != REGISTRY_FORMAT:
            raise RegistryError(f"unsupported registry format {data.get('format')!r}; expected {REGISTRY_FORMAT}")
        registry = cls()
        for item in data["versions"]:
            version = int(item["version"])
            ruleset = parse_rules(item["text"], f"rules-v{version}")
            registry._versions[version] = _Version(
                version, item["text"], str(item["author"]), int(item["created_at_ms"]), ruleset
            )
        for version in data["activation_stack"]:
            if version not in registry._versions:
                raise RegistryError(f"activation history names unknown version {version}")
            registry._activation_stack.append(int(version))
        registry._audit = [dict(entry) for entry in data["audit"]]
        return registry

    # -- internals -------------------------------------------------------------------

    def _log(self, action: str, version: int, author: str, at_ms: int) -> None:
        self._audit.append({"action": action, "version": version, "author": author, "at_ms": at_ms})
        if len(self._audit) > AUDIT_ENTRIES_MAX:
            # The ledger persists each audit entry as it happens; memory keeps the recent tail.
            del self._audit[0]
        if len(self._activation_stack) > VERSIONS_MAX:
            del self._activation_stack[0]

    @staticmethod
    def _check_author(author: str) -> None:
        if not author or len(author) > AUTHOR_LENGTH_MAX:
            raise RegistryError(f"author must be 1..{AUTHOR_LENGTH_MAX} characters")
