"""Per-tool access: which pools and tools a caller may use, and how often (plain Python, no Django).

A caller (an API key, or a token's subject) holds `Grant`s. A grant names pools (globs over pool
slugs), tools allowed and denied there (globs over tool names), and per-tool rate limits (calls per
minute, globs too). On a pool, every grant covering it counts:

- a tool is allowed when some grant allows it and no grant denies it (a deny always wins, as a
  Cedar `forbid` does, so a group's restriction holds whatever other group a user is in);
- a tool's rate limit is the smallest limit any grant sets for it (0: none).

Globs are shell-style and case-sensitive (`fnmatchcase`): `*`, `?`, `[abc]`. `read_*` matches
`read_file`, `*` matches everything.

Token grants are given by claims: `ClaimRule(claim="scope", value="mcp:read", grant=...)` gives its
grant to a token whose `scope` holds `mcp:read`. A claim may be a space-separated string (`scope`),
a list (`groups`, `roles`) or a plain value; a dotted name walks nested objects
(`realm_access.roles`), and `value="*"` matches any token of the issuer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final

EVERYTHING: Final = ("*",)


def matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatchcase(name, glob) for glob in globs)


@dataclass(frozen=True, slots=True)
class Grant:
    """Access to tools of some pools."""

    pools: tuple[str, ...] = EVERYTHING  # pool slug globs
    allow: tuple[str, ...] = EVERYTHING  # tool globs
    deny: tuple[str, ...] = ()
    tool_limits: tuple[tuple[str, int], ...] = ()  # (tool glob, calls per minute)

    def covers(self, slug: str) -> bool:
        return matches(slug, self.pools)


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """Every grant of one caller on one pool, merged."""

    allow: tuple[str, ...]
    deny: tuple[str, ...]
    tool_limits: tuple[tuple[str, int], ...]

    def allows(self, tool: str) -> bool:
        allowed = self.allow == EVERYTHING or matches(tool, self.allow)
        return allowed and not (self.deny and matches(tool, self.deny))

    def limit(self, tool: str) -> int:
        """Calls per minute allowed for `tool`; 0 when no grant limits it."""
        found = [n for glob, n in self.tool_limits if n > 0 and fnmatchcase(tool, glob)]
        return min(found) if found else 0

    def visible(self, tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The tools of a `tools/list` answer this caller may call."""
        return [t for t in tools if isinstance(t.get("name"), str) and self.allows(t["name"])]


UNRESTRICTED: Final = PoolPolicy(allow=EVERYTHING, deny=(), tool_limits=())


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """A caller's grants; `on(slug)` is None when none covers the pool (no access to it)."""

    grants: tuple[Grant, ...] = ()
    _per_pool: dict[str, PoolPolicy | None] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    def on(self, slug: str) -> PoolPolicy | None:
        try:
            return self._per_pool[slug]
        except KeyError:
            pass
        covering = [g for g in self.grants if g.covers(slug)]
        merged = (
            PoolPolicy(
                allow=tuple(dict.fromkeys(a for g in covering for a in g.allow)),
                deny=tuple(dict.fromkeys(d for g in covering for d in g.deny)),
                tool_limits=tuple(item for g in covering for item in g.tool_limits),
            )
            if covering
            else None
        )
        if len(self._per_pool) < 1024:  # bounded: pool slugs come from the URL
            self._per_pool[slug] = merged
        return merged


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """Tokens of `issuer` whose claim `claim` holds `value` get `grant`."""

    issuer: str
    claim: str
    value: str
    grant: Grant


def claim_values(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    """The values a token's claim holds: `scope` strings split on spaces, lists item by item;
    `a.b` walks into nested objects. Missing or unusable: empty."""
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return frozenset()
        value = value[part]
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, bool):
        return frozenset({"true" if value else "false"})
    if isinstance(value, int | float):
        return frozenset({str(value)})
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value if isinstance(v, str | int | float))
    return frozenset()


def policy_for_claims(
    issuer: str, claims: Mapping[str, Any], rules: Iterable[ClaimRule]
) -> ToolPolicy:
    """The grants a validated token's claims earn it."""
    grants = []
    for rule in rules:
        if rule.issuer != issuer:
            continue
        if rule.value == "*" or rule.value in claim_values(claims, rule.claim):
            grants.append(rule.grant)
    return ToolPolicy(tuple(grants))
