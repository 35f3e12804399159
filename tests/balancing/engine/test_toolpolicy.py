"""The per-tool policy language: grants merged per pool, deny wins, smallest limit, claim rules."""

from __future__ import annotations

from typing import Any

from balancing.engine.toolpolicy import (
    ClaimRule,
    Grant,
    ToolPolicy,
    claim_values,
    policy_for_claims,
)

ISSUER = "https://id.example.com"


def test_policy_no_grant_covering_the_pool_gives_no_access() -> None:
    policy = ToolPolicy((Grant(pools=("crm-*",)),))
    assert policy.on("billing") is None
    assert policy.on("crm-eu") is not None


def test_policy_allow_globs_select_tools_and_deny_wins_across_grants() -> None:
    # given one group allowed everything and another denied deletions
    policy = ToolPolicy(
        (Grant(allow=("*",)), Grant(allow=("read_*",), deny=("delete_*", "drop_table")))
    ).on("db")
    assert policy is not None
    # then a user holding both may read and write but never delete
    assert policy.allows("read_rows")
    assert policy.allows("write_rows")
    assert not policy.allows("delete_rows")
    assert not policy.allows("drop_table")


def test_policy_listing_keeps_only_callable_tools() -> None:
    policy = ToolPolicy((Grant(allow=("search", "read_*")),)).on("docs")
    assert policy is not None
    tools: list[dict[str, Any]] = [
        {"name": "search"}, {"name": "read_page"}, {"name": "write_page"}, {"nameless": 1},
    ]  # fmt: skip
    assert [t["name"] for t in policy.visible(tools)] == ["search", "read_page"]


def test_policy_tool_limit_is_the_smallest_matching_one() -> None:
    policy = ToolPolicy(
        (Grant(tool_limits=(("*", 100), ("search", 10))), Grant(tool_limits=(("sea*", 30),)))
    ).on("docs")
    assert policy is not None
    assert policy.limit("search") == 10
    assert policy.limit("read") == 100
    assert ToolPolicy((Grant(),)).on("docs").limit("search") == 0  # type: ignore[union-attr]


def test_claim_values_split_scopes_and_walk_nested_claims() -> None:
    claims = {"scope": "mcp:read mcp:write", "groups": ["sre", 7], "realm": {"roles": ["admin"]}}
    assert claim_values(claims, "scope") == {"mcp:read", "mcp:write"}
    assert claim_values(claims, "groups") == {"sre", "7"}
    assert claim_values(claims, "realm.roles") == {"admin"}
    assert claim_values(claims, "missing.path") == frozenset()


def test_claim_rules_grant_only_to_matching_tokens_of_their_issuer() -> None:
    read = Grant(pools=("docs",), allow=("read_*",))
    everyone = Grant(pools=("public",))
    rules = (
        ClaimRule(ISSUER, "scope", "mcp:read", read),
        ClaimRule(ISSUER, "groups", "sre", Grant(pools=("ops",))),
        ClaimRule(ISSUER, "scope", "*", everyone),
        ClaimRule("https://other.example.com", "scope", "mcp:read", Grant(pools=("*",))),
    )
    policy = policy_for_claims(ISSUER, {"scope": "mcp:read"}, rules)
    assert policy.grants == (read, everyone)
    assert policy.on("ops") is None
    assert policy.on("billing") is None  # the other issuer's wildcard grant does not apply
