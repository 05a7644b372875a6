"""Versioned rule sets with an audit trail; pure and in memory, persisted by the ledger.

A version is identified by its content: `version_of(text)` = sha256 of the canonical
text (line endings normalised, trailing blank space dropped). Every shard computes the
same identifier for the same text without talking to the others, so version ids never
drift between shards, and staging the same text twice is the same version (idempotent).

Nothing that does not build is ever stored: `stage` parses, type-checks and compiles the
text first. A stored version can still fail to build later (a library upgrade changes
the language, or the stored text was damaged); `from_dict` never raises for that: the
version is kept, marked broken (`error`), and `enforced_version` is the newest entry of
the activation history that does build, so the shard keeps running on the last good
rule set and says so (`problems()`).

The registry does no I/O. The ledger stores `to_dict()` (JSON-able) in PostgreSQL and
rebuilds with `RuleRegistry.from_dict()`, which re-parses every stored version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fraud.errors import RuleError
from fraud.ruleset import RuleSet, parse_rules

__all__ = [
    "VERSION_PREFIX_MIN",
    "RegistryConflict",
    "RegistryError",
    "RuleRegistry",
    "canonical_text",
    "version_of",
]

REGISTRY_FORMAT = 2
VERSIONS_MAX = 1_000
# The registry is stored as one JSON value and rewritten on every change: bound it.
TEXT_BYTES_MAX = 32 * 1024 * 1024
AUDIT_ENTRIES_MAX = 100_000
AUTHOR_LENGTH_MAX = 128
VERSION_PREFIX_MIN = 8


class RegistryError(ValueError):
    """An operation on the registry is not possible (unknown version, nothing to roll back to)."""


class RegistryConflict(RegistryError):
    """The registry is not in the state the caller expected (a concurrent change)."""


def canonical_text(text: str) -> str:
    """The form that is hashed and stored: LF line endings, one final newline.

    A string literal cannot hold a raw newline, so neither change can alter what the
    rules mean; the same file saved on Windows or with an extra blank line at the end
    is the same version.
    """
    return text.replace("\r\n", "\n").rstrip() + "\n"


def version_of(text: str) -> str:
    """The version id of a rule text: sha256 hex of its canonical form."""
    return hashlib.sha256(canonical_text(text).encode("utf-8")).hexdigest()


@dataclass(slots=True)
class _Version:
    version: str
    text: str
    author: str
    created_at_ms: int
    ruleset: RuleSet | None  # None: stored, but it does not build with this library
    error: str | None = None


def _build(version: str, text: str, filename: str | None = None) -> RuleSet:
    """Compile under the version's own name; errors name `filename` (the caller's file)."""
    try:
        return parse_rules(text, f"rules-{version[:12]}")
    except RuleError as exc:
        if filename is None:
            raise
        raise RuleError(filename, exc.line, exc.column, exc.message) from None


class RuleRegistry:
    def __init__(self) -> None:
        self._versions: dict[str, _Version] = {}
        # Versions in activation order; the last is active. Rollback pops it.
        self._activation_stack: list[str] = []
        self._audit: list[dict[str, Any]] = []

    # -- commands --------------------------------------------------------------------

    def stage(self, text: str, author: str, at_ms: int, filename: str | None = None) -> tuple[str, bool]:
        """Validate, compile and store `text`; returns (version, newly stored).

        Idempotent: the same text (after canonicalisation) is the same version, and
        staging it again stores nothing and logs nothing. Raises RuleError (nothing is
        stored) if the text does not build.
        """
        self._check_author(author)
        canonical = canonical_text(text)
        version = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        existing = self._versions.get(version)
        if existing is not None:
            if existing.ruleset is None:
                # Stored earlier, broken at load: it must build now to be usable again.
                existing.ruleset = _build(version, existing.text, filename)
                existing.error = None
            return version, False
        ruleset = _build(version, canonical, filename)
        self._make_room(len(canonical.encode("utf-8")))
        self._versions[version] = _Version(version, canonical, author, at_ms, ruleset)
        self._log("stage", version, author, at_ms)
        return version, True

    def propose(self, text: str, author: str, at_ms: int) -> str:
        """Stage `text` and return its version (see `stage`)."""
        return self.stage(text, author, at_ms)[0]

    def activate(self, version: str, author: str, at_ms: int, *, expect_active: str | None = None) -> RuleSet:
        """Make `version` the active one. Idempotent for the active version.

        With `expect_active`, refuse (RegistryConflict) unless the currently active
        version is that one: a coordinator that read the state first does not
        overwrite a change made since.
        """
        self._check_author(author)
        item = self._get(version)
        if self.active_version == version and item.ruleset is not None:
            # Idempotent so an at-least-once admin command can be retried safely.
            return item.ruleset
        if expect_active is not None and self.active_version != expect_active:
            raise RegistryConflict(f"active version is {_short(self.active_version)}, expected {_short(expect_active)}")
        if item.ruleset is None:
            raise RegistryError(f"rule-set version {_short(version)} does not build: {item.error}")
        self._activation_stack.append(version)
        self._log("activate", version, author, at_ms)
        return item.ruleset

    def rollback(
        self,
        author: str,
        at_ms: int,
        *,
        expect_from: str | None = None,
        expect_to: str | None = None,
        undo: bool = False,
    ) -> RuleSet:
        """Re-activate the version that was active before the current one.

        With `expect_from`/`expect_to` the call is idempotent and guarded: if
        `expect_to` is already active nothing happens; otherwise the active version
        must be `expect_from` and the one before it `expect_to`. `undo` marks the
        audit entry as a coordinator undoing a change that failed elsewhere.
        """
        self._check_author(author)
        if expect_to is not None and self.active_version == expect_to:
            return self._enforceable(expect_to)
        if len(self._activation_stack) < 2:
            raise RegistryError("no previously active version to roll back to")
        target = self._activation_stack[-2]
        if expect_from is not None and self.active_version != expect_from:
            raise RegistryConflict(f"active version is {_short(self.active_version)}, expected {_short(expect_from)}")
        if expect_to is not None and target != expect_to:
            raise RegistryConflict(f"previous version is {_short(target)}, expected {_short(expect_to)}")
        ruleset = self._enforceable(target)
        self._activation_stack.pop()
        self._log("undo" if undo else "rollback", target, author, at_ms)
        return ruleset

    # -- queries ---------------------------------------------------------------------

    @property
    def active_version(self) -> str | None:
        return self._activation_stack[-1] if self._activation_stack else None

    @property
    def previous_version(self) -> str | None:
        return self._activation_stack[-2] if len(self._activation_stack) >= 2 else None

    @property
    def active_ruleset(self) -> RuleSet | None:
        """The rule set that should be enforced: the active version's, or, if that does
        not build, the newest one in the activation history that does."""
        version = self.enforced_version
        return None if version is None else self._versions[version].ruleset

    @property
    def enforced_version(self) -> str | None:
        for version in reversed(self._activation_stack):
            if self._versions[version].ruleset is not None:
                return version
        return None

    def has(self, version: str) -> bool:
        return version in self._versions

    def resolve(self, prefix: str) -> list[str]:
        """Stored versions whose id starts with `prefix`."""
        return [v for v in self._versions if v.startswith(prefix)]

    def ruleset(self, version: str) -> RuleSet:
        item = self._get(version)
        if item.ruleset is None:
            raise RegistryError(f"rule-set version {_short(version)} does not build: {item.error}")
        return item.ruleset

    def text(self, version: str) -> str:
        return self._get(version).text

    def problems(self) -> list[dict[str, Any]]:
        """Versions that should be enforced but do not build: those above the enforced
        one in the activation history, newest first (empty when healthy). A broken
        version further down is shown by `versions()` (`error`) and refused if a
        rollback reaches it."""
        found: list[dict[str, Any]] = []
        for version in reversed(self._activation_stack):
            item = self._versions[version]
            if item.ruleset is not None:
                break
            if all(p["version"] != version for p in found):
                found.append({"version": version, "error": item.error})
        return found

    def versions(self) -> list[dict[str, Any]]:
        active = self.active_version
        enforced = self.enforced_version
        activated_at: dict[str, int] = {}
        for entry in self._audit:
            if entry["action"] in ("activate", "rollback", "undo"):
                activated_at[entry["version"]] = entry["at_ms"]
        return [
            {
                "version": item.version,
                "author": item.author,
                "created_at_ms": item.created_at_ms,
                "active": item.version == active,
                "enforced": item.version == enforced,
                "last_activated_at_ms": activated_at.get(item.version),
                "rule_count": None if item.ruleset is None else len(item.ruleset.rules),
                # Rules by which one partner's payments could block another's customers.
                "cross_partner_escalations": None
                if item.ruleset is None
                else list(item.ruleset.cross_partner_escalations),
                "digest": item.version,
                "error": item.error,
            }
            for item in sorted(self._versions.values(), key=lambda v: v.created_at_ms)
        ]

    def audit(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self._audit]

    # -- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REGISTRY_FORMAT,
            "versions": [
                {"version": v.version, "text": v.text, "author": v.author, "created_at_ms": v.created_at_ms}
                for v in self._versions.values()
            ],
            "activation_stack": list(self._activation_stack),
            "audit": self.audit(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleRegistry:
        """Rebuild a stored registry. A version that no longer builds (or whose text no
        longer matches its id) is kept and marked broken; this never raises for that,
        so a shard can always start. Format 1 (per-shard sequence numbers) is migrated:
        each version becomes its content hash, so versions that drifted apart across
        shards, or were stored twice by a retry, collapse into one."""
        fmt = data.get("format")
        if fmt not in (1, REGISTRY_FORMAT):
            raise RegistryError(f"unsupported registry format {fmt!r}; expected {REGISTRY_FORMAT}")
        registry = cls()
        renamed: dict[Any, str] = {}
        for item in data["versions"]:
            text = str(item["text"])
            stored_id = item["version"]
            version = version_of(text) if fmt == 1 else str(stored_id)
            renamed[stored_id] = version
            if version in registry._versions:
                continue
            ruleset: RuleSet | None = None
            error: str | None = None
            if version_of(text) != version:
                error = "stored text does not match its version id (damaged)"
            else:
                try:
                    ruleset = _build(version, canonical_text(text))
                except RuleError as exc:
                    error = str(exc)
                except Exception as exc:  # a compiler bug must not stop a shard either
                    error = f"{type(exc).__name__}: {exc}"
            registry._versions[version] = _Version(
                version, canonical_text(text), str(item["author"]), int(item["created_at_ms"]), ruleset, error
            )
        for stored_id in data["activation_stack"]:
            if stored_id not in renamed:
                raise RegistryError(f"activation history names unknown version {stored_id!r}")
            registry._activation_stack.append(renamed[stored_id])
        audit = [dict(entry) for entry in data["audit"]]
        if fmt == 1:
            for entry in audit:
                entry["version"] = renamed.get(entry["version"], entry["version"])
                if entry.get("action") == "propose":
                    entry["action"] = "stage"
        registry._audit = audit
        return registry

    # -- internals -------------------------------------------------------------------

    def _get(self, version: str) -> _Version:
        item = self._versions.get(version)
        if item is None:
            raise RegistryError(f"unknown rule-set version {_short(version)}")
        return item

    def _make_room(self, new_bytes: int) -> None:
        """Drop the oldest versions outside the activation history (staged and never
        activated, or rolled back past) until one more fits; refuse if none can go.
        A dropped version can be staged again: its id is its content."""
        in_history = set(self._activation_stack)
        used = sum(len(v.text.encode("utf-8")) for v in self._versions.values())
        candidates = [
            v for v in sorted(self._versions.values(), key=lambda v: v.created_at_ms) if v.version not in in_history
        ]
        while len(self._versions) >= VERSIONS_MAX or used + new_bytes > TEXT_BYTES_MAX:
            if not candidates:
                raise RegistryError(
                    f"registry is full ({len(self._versions)} versions, {used} bytes) and every"
                    " stored version is in the activation history"
                )
            dropped = candidates.pop(0)
            del self._versions[dropped.version]
            used -= len(dropped.text.encode("utf-8"))

    def _enforceable(self, version: str) -> RuleSet:
        item = self._get(version)
        if item.ruleset is None:
            raise RegistryError(f"rule-set version {_short(version)} does not build: {item.error}")
        return item.ruleset

    def _log(self, action: str, version: str, author: str, at_ms: int) -> None:
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


def _short(version: str | None) -> str:
    return "none" if version is None else str(version)[:12]
