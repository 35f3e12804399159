"""Caching hints and the gateway's result cache, without any server (explicit clock)."""

from __future__ import annotations

from typing import Any

from balancing.engine.cache import NO_HINTS, ResultCache, hints_of, strictest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result(ttl: int, scope: str, text: str = "x") -> dict[str, Any]:
    return {"prompts": [text], "ttlMs": ttl, "cacheScope": scope, "resultType": "complete"}


def test_strictest_takes_the_shortest_ttl_and_the_narrowest_scope() -> None:
    assert strictest([(60_000, "public"), (5_000, "public")]) == (5_000, "public")
    assert strictest([(60_000, "public"), (90_000, "private")]) == (60_000, "private")
    assert strictest([]) == NO_HINTS


def test_missing_or_malformed_hints_mean_do_not_cache() -> None:
    assert hints_of({"tools": []}) == NO_HINTS
    assert hints_of({"ttlMs": -5, "cacheScope": "public"}) == NO_HINTS
    assert hints_of({"ttlMs": True, "cacheScope": "public"}) == NO_HINTS
    assert hints_of({"ttlMs": 10, "cacheScope": "everyone"}) == (10, "private")


def test_public_result_is_shared_within_its_ttl_then_expires() -> None:
    clock = Clock()
    cache = ResultCache(clock)
    cache.put("p", "prompts/list", None, 1, result(10_000, "public"))
    clock.now += 4.0
    hit = cache.get("p", "prompts/list", None, 2)  # another key
    assert hit is not None and hit["prompts"] == ["x"]
    assert 5_000 <= hit["ttlMs"] <= 6_000  # the freshness it has left
    clock.now += 7.0
    assert cache.get("p", "prompts/list", None, 2) is None


def test_private_result_is_only_for_the_key_that_fetched_it() -> None:
    cache = ResultCache(Clock())
    cache.put("p", "resources/list", None, 1, result(10_000, "private"))
    assert cache.get("p", "resources/list", None, 1) is not None
    assert cache.get("p", "resources/list", None, 2) is None


def test_results_without_a_ttl_or_not_complete_are_not_kept() -> None:
    cache = ResultCache(Clock())
    cache.put("p", "prompts/list", None, 1, result(0, "public"))
    cache.put(
        "p",
        "resources/read",
        {"uri": "a"},
        1,
        {**result(9, "public"), "resultType": "input_required"},
    )
    assert len(cache) == 0


def test_params_tell_results_apart_but_meta_does_not() -> None:
    cache = ResultCache(Clock())
    cache.put(
        "p", "resources/read", {"uri": "a", "_meta": {"t": 1}}, 1, result(9_000, "public", "A")
    )
    assert cache.get("p", "resources/read", {"uri": "b"}, 1) is None
    hit = cache.get("p", "resources/read", {"uri": "a", "_meta": {"t": 2}}, 1)
    assert hit is not None and hit["prompts"] == ["A"]
    assert cache.get("q", "resources/read", {"uri": "a"}, 1) is None  # another pool
