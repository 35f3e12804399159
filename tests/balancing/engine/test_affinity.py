from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from balancing.engine.affinity import (
    KeyLoads,
    RequestContext,
    match_rules,
    rendezvous_order,
    stable_hash,
)
from balancing.engine.config import (
    AffinityAction,
    AffinityRuleConfig,
    MatchOn,
    MatchType,
    ServerConfig,
    Strategy,
    Transport,
)
from tests.balancing.engine.conftest import MakePool

KEYS = [f"client-{i}" for i in range(10_000)]


def rule(rule_id: int, **fields: Any) -> AffinityRuleConfig:
    fields.setdefault("order", rule_id)
    fields.setdefault("match_on", MatchOn.API_KEY)
    fields.setdefault("match_type", MatchType.EXACT)
    fields.setdefault("pattern", "app")
    fields.setdefault("action", AffinityAction.HASH)
    return AffinityRuleConfig(id=rule_id, **fields)


CTX = RequestContext(
    api_key_name="billing-app",
    client_id="cursor-7",
    headers={"x-tenant": "tenant-42"},
    tool="search_docs",
)


# --- rule matching -----------------------------------------------------------------------------


def test_match_rules_first_by_order_wins_whatever_the_list_order() -> None:
    rules = [
        rule(1, order=20, pattern="billing-app", action=AffinityAction.HASH),
        rule(2, order=10, pattern="billing-app", action=AffinityAction.PIN, pin_server="s2"),
    ]

    decision = match_rules(rules, CTX)

    assert decision is not None
    assert (decision.rule_id, decision.action, decision.pin) == (2, AffinityAction.PIN, "s2")


def test_match_rules_skips_disabled_rules() -> None:
    rules = [
        rule(1, pattern="billing-app", action=AffinityAction.PIN, pin_server="s1", enabled=False),
        rule(2, pattern="billing-app"),
    ]

    decision = match_rules(rules, CTX)

    assert decision is not None
    assert decision.rule_id == 2


@pytest.mark.parametrize(
    ("match_on", "match_type", "pattern", "header", "expected"),
    [
        (MatchOn.API_KEY, MatchType.EXACT, "billing-app", "", "billing-app"),
        (MatchOn.API_KEY, MatchType.EXACT, "billing", "", None),
        (MatchOn.API_KEY, MatchType.PREFIX, "billing", "", "billing-app"),
        (MatchOn.CLIENT_ID, MatchType.PREFIX, "cursor-", "", "cursor-7"),
        (MatchOn.CLIENT_ID, MatchType.REGEX, r"cursor-\d+", "", "cursor-7"),
        (MatchOn.HEADER, MatchType.EXACT, "tenant-42", "X-Tenant", "tenant-42"),
        (MatchOn.HEADER, MatchType.REGEX, r"tenant-4\d", "x-tenant", "tenant-42"),
        (MatchOn.HEADER, MatchType.PREFIX, "tenant", "x-other", None),
        (MatchOn.TOOL, MatchType.EXACT, "search_docs", "", "search_docs"),
        (MatchOn.TOOL, MatchType.REGEX, r"search_.*", "", "search_docs"),
        (MatchOn.TOOL, MatchType.PREFIX, "fetch", "", None),
    ],
)
def test_match_rules_each_kind_matches_its_value(
    match_on: MatchOn, match_type: MatchType, pattern: str, header: str, expected: str | None
) -> None:
    rules = [rule(1, match_on=match_on, match_type=match_type, pattern=pattern, header=header)]

    decision = match_rules(rules, CTX)

    assert (decision.hash_key if decision else None) == expected


def test_match_rules_regex_must_match_the_whole_value() -> None:
    rules = [
        rule(
            1,
            match_on=MatchOn.HEADER,
            header="x-tenant",
            match_type=MatchType.REGEX,
            pattern=r"tenant-4",
        )
    ]

    assert match_rules(rules, CTX) is None  # "tenant-4" is only a prefix of "tenant-42"


def test_match_rules_bad_regex_never_matches_and_later_rules_still_apply() -> None:
    rules = [
        rule(
            1,
            match_type=MatchType.REGEX,
            pattern="billing-(",
            action=AffinityAction.PIN,
            pin_server="s1",
        ),
        rule(2, match_type=MatchType.PREFIX, pattern="billing"),
    ]

    decision = match_rules(rules, CTX)

    assert decision is not None
    assert decision.rule_id == 2


def test_match_rules_pin_without_server_is_skipped() -> None:
    rules = [
        rule(1, pattern="billing-app", action=AffinityAction.PIN),
        rule(2, pattern="billing-app"),
    ]

    decision = match_rules(rules, CTX)

    assert decision is not None
    assert decision.rule_id == 2


def test_match_rules_missing_value_does_not_match() -> None:
    rules = [rule(1, match_on=MatchOn.TOOL, match_type=MatchType.PREFIX, pattern="")]

    assert match_rules(rules, RequestContext(api_key_name="a")) is None  # no tool: no match
    assert match_rules([], CTX) is None


# --- rendezvous hashing ----------------------------------------------------------------------


def owners(put: Any, endpoints: list[Any] | None = None) -> dict[str, str]:
    chosen = {}
    for key in KEYS:
        pick = put.balancer.pick(endpoints or put.endpoints, 1000.0, hash_key=key)
        chosen[key] = pick.endpoint.config.name
    return chosen


def _hashes_in_a_process(hash_seed: str, expression: str) -> list[int]:
    code = (
        "import json, sys; from balancing.engine.affinity import stable_hash; "
        f"print(json.dumps([{expression} for v in sys.argv[1:]]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", code, *HASHED], env=env, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout))


HASHED = ["abc", "tenant-42", "", "ünïcode"]


def test_stable_hash_is_the_same_in_every_process() -> None:
    # given two web processes started with different hash seeds (as every Python process is)
    seeds = ("1", "2")
    # then each hashes every key as this process does
    mine = [stable_hash(v) for v in HASHED]
    for seed in seeds:
        assert _hashes_in_a_process(seed, "stable_hash(v)") == mine
    # (where Python's own hash() would not: the seeds make a difference)
    assert _hashes_in_a_process(seeds[0], "hash(v)") != _hashes_in_a_process(seeds[1], "hash(v)")


def test_hrw_server_leaving_moves_only_its_own_keys(make_pool: MakePool) -> None:
    put = make_pool([{}] * 5, strategy=Strategy.ROUND_ROBIN)
    before = owners(put)

    after = owners(put, [e for e in put.endpoints if e.config.name != "s3"])

    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "s3"}
    assert len(moved) == pytest.approx(len(KEYS) / 5, rel=0.1)


def test_hrw_server_joining_takes_about_one_in_n_plus_one_keys(make_pool: MakePool) -> None:
    put = make_pool([{}] * 6, strategy=Strategy.ROUND_ROBIN)
    before = owners(put, put.endpoints[:5])

    after = owners(put)

    moved = [k for k in KEYS if before[k] != after[k]]
    assert len(moved) / len(KEYS) == pytest.approx(1 / 6, abs=0.015)
    assert {after[k] for k in moved} == {"s6"}  # keys only move to the newcomer


def test_hrw_two_balancers_agree_on_every_key(make_pool: MakePool) -> None:
    one = make_pool([{}, {"weight": 2}, {}, {}], seed=1)
    other = make_pool([{}, {"weight": 2}, {}, {}], seed=99)

    assert owners(one) == owners(other)


def test_hrw_weights_are_honoured(make_pool: MakePool) -> None:
    put = make_pool([{"weight": 3}, {"weight": 1}])

    counts = Counter(owners(put).values())

    assert counts["s1"] / len(KEYS) == pytest.approx(0.75, abs=0.02)


def test_hrw_hashing_ignores_slow_start_so_processes_still_agree(make_pool: MakePool) -> None:
    put = make_pool([{}] * 3, slow_start_window=30.0)
    before = owners(put)
    put.endpoint("s2").up_since = 995.0  # this process saw s2 come back 5 s ago

    assert owners(put) == before


def servers(count: int) -> list[ServerConfig]:
    return [
        ServerConfig(id=i, name=f"s{i}", transport=Transport.STDIO, command="x")
        for i in range(1, count + 1)
    ]


def test_rendezvous_order_puts_the_owner_first_and_is_stable() -> None:
    members = servers(4)

    order = rendezvous_order("tenant-42", members)

    assert sorted(m.name for m in order) == ["s1", "s2", "s3", "s4"]
    assert rendezvous_order("tenant-42", list(reversed(members))) == order


def zipf_keys(count: int, distinct: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank**1.1) for rank in range(1, distinct + 1)]
    return [f"key-{i}" for i in rng.choices(range(distinct), weights=weights, k=count)]


def test_bounded_load_keeps_max_within_factor_of_mean_under_zipf_keys() -> None:
    members = servers(5)
    keys = zipf_keys(10_000, 1_000, seed=5)
    bounded = KeyLoads(balance_factor=1.25)
    unbounded = KeyLoads(balance_factor=0.0)

    for key in keys:
        bounded.assign(key, members)
        unbounded.assign(key, members)

    mean = len(keys) / len(members)
    loads = [bounded.load(m.key) for m in members]
    assert max(loads) <= math.ceil(1.25 * mean) + 1
    assert sum(loads) == len(keys)
    # The skew is real: without the bound, hot keys pile onto their owners.
    assert max(unbounded.load(m.key) for m in members) > 1.4 * mean


def test_bounded_load_release_frees_room_and_the_key_returns_home() -> None:
    members = servers(3)
    loads = KeyLoads(balance_factor=1.0)
    home = loads.assign("hot", members)
    assert home is not None
    # Fill `home` so the same key must go elsewhere.
    placed = [loads.assign("hot", members) for _ in range(5)]
    assert any(m is not home for m in placed)

    for member in [home, *placed]:
        assert member is not None
        loads.release(member.key)

    assert [loads.load(m.key) for m in members] == [0, 0, 0]
    assert loads.assign("hot", members) is home
