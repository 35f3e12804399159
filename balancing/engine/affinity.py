"""Affinity: which rule applies to a call, and where a hash key lands.

Rules match an API key, a header, a client id or a tool and either pin the call to one server or
hash on the matched value. Hashing is weighted rendezvous (HRW): each server scores the key and the
best score wins, so when a server leaves only its own keys move, and every web process computes the
same answer from the same config without talking to the others. An optional bounded load (the
`hash_balance_factor`, 1.25) walks down the HRW order past servers already above their share.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Protocol, TypeVar

from balancing.engine.config import AffinityAction, AffinityRuleConfig, MatchOn, MatchType

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_MASK64 = (1 << 64) - 1
_RULE_ORDER = attrgetter("order", "id")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What affinity rules can look at; `headers` keys are lower-case."""

    api_key_name: str = ""
    client_id: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    tool: str | None = None


@dataclass(frozen=True, slots=True)
class AffinityDecision:
    rule_id: int
    action: AffinityAction
    pin: str | None = None  # server name, for action=pin
    hash_key: str | None = None  # the matched value, for action=hash


def match_rules(
    rules: Sequence[AffinityRuleConfig], ctx: RequestContext
) -> AffinityDecision | None:
    """The decision of the first enabled rule, in `order`, that matches `ctx`; None if none does.

    A pin rule without a server name is skipped (a config mistake must not stop later rules).
    """
    if not rules:
        return None
    for rule in sorted(rules, key=_RULE_ORDER):
        if not rule.enabled:
            continue
        value = _matched_value(rule, ctx)
        if not value or not _matches(rule.match_type, rule.pattern, value):
            continue
        if rule.action is AffinityAction.PIN:
            if rule.pin_server:
                return AffinityDecision(rule.id, rule.action, pin=rule.pin_server)
            continue
        return AffinityDecision(rule.id, rule.action, hash_key=value)
    return None


def _matched_value(rule: AffinityRuleConfig, ctx: RequestContext) -> str | None:
    match rule.match_on:
        case MatchOn.API_KEY:
            return ctx.api_key_name
        case MatchOn.CLIENT_ID:
            return ctx.client_id
        case MatchOn.TOOL:
            return ctx.tool
        case MatchOn.HEADER:
            return ctx.headers.get(rule.header.lower())
    return None


def _matches(match_type: MatchType, pattern: str, value: str) -> bool:
    match match_type:
        case MatchType.EXACT:
            return value == pattern
        case MatchType.PREFIX:
            return value.startswith(pattern)
        case MatchType.REGEX:
            compiled = _compile(pattern)
            # Full match, as Envoy's safe_regex: `tenant-1` must not match `tenant-10`.
            return compiled is not None and compiled.fullmatch(value) is not None
    return False


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str] | None:
    # A bad pattern should have been refused by the admin; on the hot path it just never matches.
    try:
        return re.compile(pattern)
    except re.error:
        return None


# --- rendezvous hashing -------------------------------------------------------------------------


class HashMember(Protocol):
    """Anything with a stable identity and a weight: `ServerConfig`, `Endpoint`."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...


M = TypeVar("M", bound=HashMember)


def stable_hash(text: str) -> int:
    """64-bit hash, identical in every process and Python run (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=4096)
def member_seed(member_key: str) -> int:
    """A member's half of its HRW scores (cached: members are few and long-lived)."""
    return stable_hash(member_key)


def hrw_score(member_key: str, key_hash: int, weight: float) -> float:
    """Weighted rendezvous score: `-w / ln(u)`, u uniform in (0, 1) from (member, key)."""
    return -weight / math.log(_uniform(member_seed(member_key) ^ key_hash))


def _uniform(x: int) -> float:
    # splitmix64's finalizer: bijective and full-avalanche, so one blake2b per key and one per
    # member (cached) are enough, and a pick costs a few integer operations per member.
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return ((z >> 11) + 0.5) * (1.0 / (1 << 53))


def key_position(key_hash: int) -> float:
    """The key as a number in [0, 1): lets a hashed call choose a priority level the same way
    in every process."""
    return (key_hash >> 11) * (1.0 / (1 << 53))


def rendezvous_order(key: str, members: Sequence[M]) -> list[M]:
    """All members, best first, for `key` (weights honoured, no load bound)."""
    key_hash = stable_hash(key)
    return sorted(members, key=lambda m: hrw_score(m.key, key_hash, m.weight), reverse=True)


def rendezvous_choose(
    key_hash: int,
    members: Sequence[M],
    loads: Sequence[int] | None = None,
    balance_factor: float = 0.0,
    *,
    seeds: Sequence[int] | None = None,
) -> M | None:
    """The HRW winner for `key_hash`; with `loads` and a `balance_factor`, the best member whose
    load stays within `ceil(factor × (total + 1) × w / W)` (its weighted share of the average).

    With factor ≥ 1 some member always fits, so a choice is always made. `seeds` (each member's
    `member_seed(key)`) may be passed by callers that cache them.
    """
    if not members:
        return None
    if seeds is None:
        seeds = [member_seed(m.key) for m in members]
    weights = [m.weight for m in members]
    if min(weights) == max(weights):
        # Equal weights: -w / ln(u) orders members as u does, so skip the logarithms.
        scores = [_uniform(seed ^ key_hash) for seed in seeds]
    else:
        scores = [
            -w / math.log(_uniform(seed ^ key_hash)) for seed, w in zip(seeds, weights, strict=True)
        ]
    best = max(range(len(members)), key=scores.__getitem__)
    if loads is None or balance_factor <= 0:
        return members[best]
    total_weight = sum(weights)
    if total_weight <= 0:
        return members[best]
    room = balance_factor * (sum(loads) + 1) / total_weight

    def fits(i: int) -> bool:
        return loads[i] + 1 <= math.ceil(room * weights[i])

    if fits(best):
        return members[best]
    # Rare: the favourite is full, so walk down its order (sorting only now keeps picks cheap).
    for i in sorted(range(len(members)), key=scores.__getitem__, reverse=True):
        if fits(i):
            return members[i]
    return members[best]  # only reachable with a factor below 1


class KeyLoads:
    """Bounded-load HRW for long-lived bindings (sticky sessions): counts keys bound per member."""

    def __init__(self, balance_factor: float = 1.25) -> None:
        self.balance_factor = balance_factor
        self._counts: dict[str, int] = {}

    def assign(self, key: str, members: Sequence[M]) -> M | None:
        """Bind `key` to a member and count it there; `release` the member when the binding ends."""
        loads = [self._counts.get(m.key, 0) for m in members]
        chosen = rendezvous_choose(stable_hash(key), members, loads, self.balance_factor)
        if chosen is not None:
            self._counts[chosen.key] = self._counts.get(chosen.key, 0) + 1
        return chosen

    def release(self, member_key: str) -> None:
        count = self._counts.get(member_key, 0)
        if count <= 1:
            self._counts.pop(member_key, None)
        else:
            self._counts[member_key] = count - 1

    def load(self, member_key: str) -> int:
        return self._counts.get(member_key, 0)
