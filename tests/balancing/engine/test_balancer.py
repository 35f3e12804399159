from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from balancing.engine.balancer import PickReason
from balancing.engine.config import AdminState, Health, Strategy
from tests.balancing.engine.conftest import MakePool, PoolUnderTest

NOW = 1000.0
STRATEGIES = [Strategy.ROUND_ROBIN, Strategy.LEAST_CONNECTIONS, Strategy.HEALTH_BASED]


def share(counts: Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def settle_latencies(put: Any, latency: float = 0.01, now: float = NOW) -> None:
    """Give every server one measured call of the same latency."""
    for endpoint in put.endpoints:
        endpoint.stats.begin()
        endpoint.stats.end(now, latency)


def closed_loop(
    put: Any, *, calls: int, concurrency: int, service: float = 0.01, seed: int = 3
) -> Counter[str]:
    """Virtual-time load: `concurrency` calls always in flight, service times `service` ± 2 %.

    (Peak-EWMA jumps to the highest recent sample, and a busier server draws more samples, so very
    noisy latencies make equal servers look slightly unequal; ±2 % keeps this about weights.)

    Counts picks after a warm-up of one round of `concurrency` calls.
    """
    rng = random.Random(seed)
    in_flight: list[tuple[float, int, Any, float]] = []
    counts: Counter[str] = Counter()
    now = NOW
    for seq in range(calls + concurrency):
        if len(in_flight) >= concurrency:
            now, _, done, started = heapq.heappop(in_flight)
            done.stats.end(now, now - started)
        chosen = put.pick(now)
        assert chosen is not None
        endpoint = chosen.endpoint
        endpoint.stats.begin()
        heapq.heappush(in_flight, (now + service * rng.uniform(0.98, 1.02), seq, endpoint, now))
        if seq >= concurrency:
            counts[endpoint.config.name] += 1
    return counts


# --- smooth weighted round robin ------------------------------------------------------------


def test_round_robin_weights_3_to_1_share_within_2_percent(make_pool: MakePool) -> None:
    put = make_pool([dict(weight=3), dict(weight=1)], strategy=Strategy.ROUND_ROBIN)

    counts = put.shares(10_000)

    assert share(counts, "s1") == pytest.approx(0.75, abs=0.02)


def test_round_robin_three_servers_share_follows_weights(make_pool: MakePool) -> None:
    put = make_pool([dict(weight=5), dict(weight=3), dict(weight=2)], strategy=Strategy.ROUND_ROBIN)

    counts = put.shares(10_000)

    assert [share(counts, n) for n in ("s1", "s2", "s3")] == pytest.approx(
        [0.5, 0.3, 0.2], abs=0.02
    )


def test_round_robin_3_to_1_interleaves_the_light_server(make_pool: MakePool) -> None:
    put = make_pool([dict(weight=3), dict(weight=1)], strategy=Strategy.ROUND_ROBIN)

    sequence = [put.pick().endpoint.config.name for _ in range(400)]

    assert sequence[:4] == ["s1", "s1", "s2", "s1"]  # nginx SWRR, not s1 s1 s1 s2
    # Every run of 4 picks holds exactly one s2: the light server is never starved for long.
    assert all(sequence[i : i + 4].count("s2") == 1 for i in range(len(sequence) - 3))


def test_round_robin_5_1_1_spreads_light_servers_between_heavy_picks(make_pool: MakePool) -> None:
    put = make_pool([dict(weight=5), dict(weight=1), dict(weight=1)], strategy=Strategy.ROUND_ROBIN)

    sequence = [put.pick().endpoint.config.name for _ in range(7)]

    assert sequence == ["s1", "s1", "s2", "s1", "s3", "s1", "s1"]


# --- least connections and health based (P2C) -----------------------------------------------


@pytest.mark.parametrize("strategy", [Strategy.LEAST_CONNECTIONS, Strategy.HEALTH_BASED])
def test_two_choices_idle_pool_shares_by_weight(make_pool: MakePool, strategy: Strategy) -> None:
    put = make_pool([dict(weight=3), dict(weight=1), dict(weight=1)], strategy=strategy)
    settle_latencies(put)

    counts = put.shares(10_000)

    assert [share(counts, n) for n in ("s1", "s2", "s3")] == pytest.approx(
        [0.6, 0.2, 0.2], abs=0.02
    )


@pytest.mark.parametrize("strategy", [Strategy.LEAST_CONNECTIONS, Strategy.HEALTH_BASED])
def test_two_choices_loaded_pool_shares_by_weight(make_pool: MakePool, strategy: Strategy) -> None:
    put = make_pool([dict(weight=3), dict(weight=1)], strategy=strategy)
    settle_latencies(put)

    counts = closed_loop(put, calls=10_000, concurrency=40)

    assert share(counts, "s1") == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize("strategy", [Strategy.LEAST_CONNECTIONS, Strategy.HEALTH_BASED])
def test_two_choices_equal_servers_break_ties_fairly(
    make_pool: MakePool, strategy: Strategy
) -> None:
    put = make_pool([{}, {}, {}, {}], strategy=strategy)
    settle_latencies(put)

    counts = put.shares(10_000)

    assert [share(counts, f"s{i}") for i in range(1, 5)] == pytest.approx([0.25] * 4, abs=0.02)


@pytest.mark.parametrize("strategy", [Strategy.LEAST_CONNECTIONS, Strategy.HEALTH_BASED])
def test_two_choices_server_with_many_in_flight_gets_less(
    make_pool: MakePool, strategy: Strategy
) -> None:
    put = make_pool([{}, {}, {}], strategy=strategy)
    settle_latencies(put)
    put.endpoint("s1").stats.in_flight = 10

    counts = put.shares(3_000)

    assert share(counts, "s1") < 0.05
    assert share(counts, "s2") == pytest.approx(0.5, abs=0.03)


def test_health_based_slow_server_gets_less_even_when_idle(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.HEALTH_BASED)
    settle_latencies(put, 0.01)
    slow = put.endpoint("s1").stats
    slow.begin()
    slow.end(NOW, 0.2)

    counts = put.shares(3_000)

    assert share(counts, "s1") < 0.05


def test_health_based_failing_server_is_penalized(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.HEALTH_BASED)
    settle_latencies(put, 0.01, now=NOW - 1)
    failing = put.endpoint("s1").stats
    for i in range(5):
        failing.begin()
        failing.end(NOW - 1 + i * 0.2, 0.001, failed=True)  # fails fast: looks "quick"

    counts = put.shares(3_000)

    assert failing.latency(NOW) >= 0.01  # a failure never makes a server look faster
    assert share(counts, "s1") < 0.05


def test_health_based_new_server_gets_a_neutral_share(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.HEALTH_BASED)
    for name in ("s1", "s2"):
        put.endpoint(name).stats.begin()
        put.endpoint(name).stats.end(NOW, 0.02)
    assert not put.endpoint("s3").stats.sampled

    counts = put.shares(3_000)

    assert share(counts, "s3") == pytest.approx(1 / 3, abs=0.03)


def test_health_based_starved_slow_server_is_tried_again_after_idle_decay(
    make_pool: MakePool,
) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.HEALTH_BASED)
    settle_latencies(put, 0.01, now=0.0)
    slow = put.endpoint("s1").stats
    slow.begin()
    slow.end(0.0, 0.5)  # 50x the others

    slow_picks: list[float] = []
    for tick in range(600):  # 60 s at 10 calls/s, each call 10 ms
        now = tick / 10
        chosen = put.pick(now).endpoint
        chosen.stats.begin()
        chosen.stats.end(now, 0.5 if chosen is put.endpoint("s1") else 0.01)
        if chosen.config.name == "s1":
            slow_picks.append(now)

    assert slow_picks, "a starved server must be probed again once its estimate decays"
    # Not before a whole decay period of silence plus the time to decay from 0.5 s to 10 ms.
    assert min(slow_picks) > 10 + 10 * 3.5


# --- priorities and panic --------------------------------------------------------------------


def level_of(put: PoolUnderTest, name: str) -> int:
    return put.endpoint(name).config.priority


def test_priorities_level0_with_4_of_5_healthy_keeps_all_traffic(make_pool: MakePool) -> None:
    servers = [dict(health=Health.DOWN)] + [{}] * 4 + [dict(priority=1)] * 2
    put = make_pool(servers, strategy=Strategy.LEAST_CONNECTIONS)

    picks = [put.pick() for _ in range(2_000)]

    assert {p.level for p in picks} == {0}  # 4/5 × 1.4 = 112 % ≥ 100
    assert not any(p.panic for p in picks)
    assert "s1" not in {p.endpoint.config.name for p in picks}


def test_priorities_level0_with_3_of_5_healthy_spills_16_percent(make_pool: MakePool) -> None:
    servers = [dict(health=Health.DOWN)] * 2 + [{}] * 3 + [dict(priority=1)] * 2
    put = make_pool(servers, strategy=Strategy.LEAST_CONNECTIONS)

    picks = [put.pick() for _ in range(10_000)]

    spilled = sum(p.level == 1 for p in picks) / len(picks)
    assert spilled == pytest.approx(0.16, abs=0.02)  # 3/5 × 1.4 = 84 % stays on level 0
    assert not any(p.panic for p in picks)


def test_priorities_total_health_under_100_normalizes_and_panics(make_pool: MakePool) -> None:
    # level 0: 2/5 healthy → 56; level 1: 1/5 → 28; total 84 → loads 2/3 and 1/3, both in panic.
    servers: list[dict[str, Any]] = [dict(health=Health.DOWN)] * 3 + [{}] * 2
    servers += [dict(priority=1, health=Health.DOWN)] * 4 + [dict(priority=1)]
    put = make_pool(servers, strategy=Strategy.ROUND_ROBIN)

    picks = [put.pick() for _ in range(9_000)]

    assert sum(p.level == 0 for p in picks) / len(picks) == pytest.approx(2 / 3, abs=0.02)
    assert all(p.panic for p in picks)
    assert {p.endpoint.config.name for p in picks} == {f"s{i}" for i in range(1, 11)}


def test_panic_under_threshold_spreads_over_unhealthy_servers_of_the_level(
    make_pool: MakePool,
) -> None:
    put = make_pool([dict(health=Health.DOWN)] * 3 + [{}] * 2, strategy=Strategy.ROUND_ROBIN)
    put.eject("s4")  # cap: 2 of 5 may be out; s4 is the first

    picks = [put.pick() for _ in range(100)]

    assert all(p.panic for p in picks)  # 1 of 5 healthy: 20 % < 50 %
    assert Counter(p.endpoint.config.name for p in picks) == {f"s{i}": 20 for i in range(1, 6)}


def test_panic_not_entered_when_lower_level_absorbs_the_rest(make_pool: MakePool) -> None:
    # level 0: 1/4 healthy → 35; level 1: 4/4 → 100: total ≥ 100, so Envoy disregards panic.
    servers = [dict(health=Health.DOWN)] * 3 + [{}] + [dict(priority=1)] * 4
    put = make_pool(servers, strategy=Strategy.LEAST_CONNECTIONS)

    picks = [put.pick() for _ in range(5_000)]

    assert not any(p.panic for p in picks)
    level0 = [p.endpoint.config.name for p in picks if p.level == 0]
    assert set(level0) == {"s4"}
    assert len(level0) / len(picks) == pytest.approx(0.35, abs=0.02)


def test_panic_with_no_healthy_server_uses_level_0(make_pool: MakePool) -> None:
    servers = [dict(health=Health.DOWN)] * 2 + [dict(priority=1, health=Health.DOWN)] * 2
    put = make_pool(servers, strategy=Strategy.LEAST_CONNECTIONS)

    picks = [put.pick() for _ in range(200)]

    assert all(p.panic and p.level == 0 for p in picks)
    assert {p.endpoint.config.name for p in picks} == {"s1", "s2"}


def test_panic_threshold_zero_with_no_healthy_server_picks_nothing(make_pool: MakePool) -> None:
    put = make_pool([dict(health=Health.DOWN)] * 2, panic_threshold=0.0)

    assert put.pick_or_none() is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_panic_never_picks_draining_or_disabled_servers(
    make_pool: MakePool, strategy: Strategy
) -> None:
    servers = [dict(health=Health.DOWN)] * 3 + [
        dict(state=AdminState.DRAINING),
        dict(state=AdminState.DISABLED),
    ]
    put = make_pool(servers, strategy=strategy)

    names = {put.pick().endpoint.config.name for _ in range(300)}

    assert names == {"s1", "s2", "s3"}


def test_draining_servers_do_not_count_against_level_health(make_pool: MakePool) -> None:
    servers: list[dict[str, Any]] = [{}] * 2 + [dict(state=AdminState.DRAINING)] * 2
    servers += [dict(priority=1)]
    put = make_pool(servers, strategy=Strategy.LEAST_CONNECTIONS)

    picks = [put.pick() for _ in range(1_000)]

    assert {p.level for p in picks} == {0}


# --- slow start ------------------------------------------------------------------------------


def test_slow_start_weight_ramps_from_10_percent_to_full(make_pool: MakePool) -> None:
    put = make_pool([{"weight": 4}], slow_start_window=30.0)
    endpoint = put.endpoint("s1")
    endpoint.up_since = NOW

    ramp = [endpoint.effective_weight(NOW + t, 30.0) for t in (0.0, 1.5, 15.0, 30.0, 60.0)]

    assert ramp == pytest.approx([0.4, 0.4, 2.0, 4.0, 4.0])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_slow_start_server_at_half_window_gets_a_third_of_two(
    make_pool: MakePool, strategy: Strategy
) -> None:
    put = make_pool([{}, {}], strategy=strategy, slow_start_window=30.0)
    settle_latencies(put)
    put.endpoint("s2").up_since = NOW - 15.0  # weight 1 × 0.5 against 1

    counts = put.shares(6_000)

    assert share(counts, "s2") == pytest.approx(1 / 3, abs=0.02)


def test_slow_start_does_not_apply_to_servers_present_at_start(make_pool: MakePool) -> None:
    put = make_pool([{}, {}], strategy=Strategy.ROUND_ROBIN)

    assert put.endpoint("s1").effective_weight(0.0, 30.0) == 1.0


# --- pin, hash, exclude, tools, caps, trials ---------------------------------------------------


def test_pin_returns_the_named_server_when_it_may_take_the_call(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, dict(weight=1, priority=1)])

    picks = {put.pick(pin="s3").endpoint.config.name for _ in range(20)}

    assert picks == {"s3"}
    assert put.pick(pin="s3").reason is PickReason.PIN


@pytest.mark.parametrize(
    "spec",
    [dict(health=Health.DOWN), dict(state=AdminState.DRAINING), dict(state=AdminState.DISABLED)],
)
def test_pin_to_unavailable_server_falls_back_by_priority(
    make_pool: MakePool, spec: dict[str, Any]
) -> None:
    put = make_pool([spec, {}, {}, {}, dict(priority=1)])  # level 0 stays ≥ 3/4 healthy

    picks = [put.pick(pin="s1") for _ in range(50)]

    assert {p.endpoint.config.name for p in picks} == {"s2", "s3", "s4"}
    assert all(p.reason is PickReason.BALANCE for p in picks)


def test_pin_to_excluded_server_falls_back(make_pool: MakePool) -> None:
    put = make_pool([{}, {}])

    assert put.pick(pin="s1", exclude={1}).endpoint.config.name == "s2"


def test_hash_key_sends_a_key_to_the_same_server_every_time(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}, {}], strategy=Strategy.ROUND_ROBIN)

    first = {key: put.pick(hash_key=key).endpoint.config.name for key in map(str, range(400))}
    again = {key: put.pick(hash_key=key).endpoint.config.name for key in map(str, range(400))}

    assert first == again
    assert put.pick(hash_key="k").reason is PickReason.HASH
    assert min(Counter(first.values()).values()) > 60  # spread over all four (100 each ideal)


def test_hash_key_skips_a_server_above_its_bounded_load(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}, {}], hash_balance_factor=1.25)
    favourite = put.pick(hash_key="tenant-7").endpoint
    favourite.stats.in_flight = 5  # limit for the next call: ceil(1.25 × 6 / 4) = 2

    moved = put.pick(hash_key="tenant-7").endpoint

    assert moved is not favourite
    for endpoint in put.endpoints:
        endpoint.stats.in_flight = 1  # limit: ceil(1.25 × 5 / 4) = 2, room for one more each
    assert put.pick(hash_key="tenant-7").endpoint is favourite  # back when loads are even


def test_exclude_skips_servers_already_tried(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.LEAST_CONNECTIONS)

    names = {put.pick(exclude={1, 2}).endpoint.config.name for _ in range(50)}

    assert names == {"s3"}
    assert put.pick_or_none(exclude={1, 2, 3}) is None


def test_tool_routes_only_to_servers_that_list_it(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.ROUND_ROBIN)
    put.endpoint("s1").tools = frozenset({"search"})
    put.endpoint("s2").tools = frozenset({"fetch"})
    # s3 has not been listed yet: it may have the tool

    names = {put.pick(tool="search").endpoint.config.name for _ in range(50)}

    assert names == {"s1", "s3"}


def test_tool_missing_on_level_0_spills_to_level_1(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, dict(priority=1)], strategy=Strategy.ROUND_ROBIN)
    for name in ("s1", "s2"):
        put.endpoint(name).tools = frozenset({"fetch"})

    chosen = put.pick(tool="search")

    assert (chosen.endpoint.config.name, chosen.level, chosen.panic) == ("s3", 1, False)


def test_max_in_flight_cap_skips_full_servers(make_pool: MakePool) -> None:
    put = make_pool([dict(max_in_flight=2), {}], strategy=Strategy.ROUND_ROBIN)
    put.endpoint("s1").stats.in_flight = 2

    names = {put.pick().endpoint.config.name for _ in range(20)}

    assert names == {"s2"}
    put.endpoint("s2").stats.in_flight = 5
    assert put.pick_or_none(exclude={2}) is None


def test_full_level_0_falls_back_to_level_1_without_panic(make_pool: MakePool) -> None:
    put = make_pool([dict(max_in_flight=1), dict(priority=1)], strategy=Strategy.ROUND_ROBIN)
    put.endpoint("s1").stats.in_flight = 1

    chosen = put.pick()

    assert (chosen.endpoint.config.name, chosen.panic) == ("s2", False)


def test_half_open_server_gets_exactly_one_trial(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}, {}], strategy=Strategy.ROUND_ROBIN)
    put.eject("s1", now=NOW)
    after = put.endpoint("s1").outlier.ejected_until + 0.1

    picks = [put.pick(after) for _ in range(40)]

    trials = [p for p in picks if p.endpoint.config.name == "s1"]
    assert len(trials) == 1
    assert trials[0].trial
    assert not any(p.trial for p in picks if p.endpoint.config.name != "s1")


def test_ejected_server_is_not_picked_outside_panic(make_pool: MakePool) -> None:
    put = make_pool([{}, {}, {}], strategy=Strategy.ROUND_ROBIN)
    put.eject("s2")

    names = {put.pick().endpoint.config.name for _ in range(30)}

    assert names == {"s1", "s3"}


def test_pick_counts_picks_on_the_chosen_server(make_pool: MakePool) -> None:
    put = make_pool([{}, {}], strategy=Strategy.ROUND_ROBIN)

    put.shares(10)

    assert [e.stats.picks for e in put.endpoints] == [5, 5]


def test_configure_applies_a_new_strategy_to_the_next_pick(make_pool: MakePool) -> None:
    put = make_pool([{}, {}], strategy=Strategy.ROUND_ROBIN)
    put.endpoint("s1").stats.in_flight = 3
    assert put.pick().endpoint.config.name == "s1"  # round robin ignores load

    put.balancer.configure(replace(put.pool, strategy=Strategy.LEAST_CONNECTIONS))

    assert {put.pick().endpoint.config.name for _ in range(20)} == {"s2"}


# --- property: what a pick outside panic may never be ----------------------------------------

server_states = st.fixed_dictionaries(
    {
        # Mostly enabled and up, so that many examples reach a pick rather than a 503.
        "state": st.sampled_from(
            [AdminState.ENABLED] * 3 + [AdminState.DRAINING, AdminState.DISABLED]
        ),
        "health": st.sampled_from([Health.UP] * 2 + list(Health)),
        "priority": st.integers(0, 2),
        "weight": st.integers(0, 5),
        "max_in_flight": st.sampled_from([0, 0, 1, 3]),
    }
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # make_pool is a pure factory
)
@given(
    servers=st.lists(server_states, min_size=1, max_size=7),
    in_flight=st.lists(st.integers(0, 4), min_size=7, max_size=7),
    ejected=st.sets(st.integers(1, 7), max_size=4),
    tools=st.lists(
        st.sampled_from([None, None, frozenset(), frozenset({"t"})]), min_size=7, max_size=7
    ),
    exclude=st.sets(st.integers(1, 7), max_size=3),
    tool=st.sampled_from([None, "t"]),
    strategy=st.sampled_from(STRATEGIES),
    hash_key=st.sampled_from([None, "k1", "k2"]),
    pin=st.sampled_from([None, "s1", "s3"]),
    seed=st.integers(0, 3),
)
def test_pick_outside_panic_is_never_an_unusable_server_and_never_refuses_a_usable_one(
    make_pool: MakePool,
    servers: list[dict[str, Any]],
    in_flight: list[int],
    ejected: set[int],
    tools: list[frozenset[str] | None],
    exclude: set[int],
    tool: str | None,
    strategy: Strategy,
    hash_key: str | None,
    pin: str | None,
    seed: int,
) -> None:
    put = make_pool(servers, strategy=strategy, seed=seed)
    for endpoint, count, listed in zip(put.endpoints, in_flight, tools, strict=False):
        endpoint.stats.in_flight = count
        endpoint.tools = listed
        if endpoint.config.id in ejected:
            put.eject(endpoint.config.name)

    for step in range(5):
        now = NOW + step * 0.001
        could_serve = any(
            e.available(now)
            and e.outlier.may_take(now)
            and (tool is None or e.has_tool(tool))
            and e.config.id not in exclude
            and e.config.weight > 0
            and not 0 < e.config.max_in_flight <= e.stats.in_flight
            for e in put.endpoints
        )
        chosen = put.pick_or_none(now, tool=tool, exclude=exclude, hash_key=hash_key, pin=pin)
        event("no pick" if chosen is None else "panic" if chosen.panic else "normal pick")
        # A 503 only when no server could have served the call.
        assert chosen is not None or not could_serve
        if chosen is None:
            continue
        endpoint = chosen.endpoint
        config = endpoint.config
        # never, panic or not:
        assert config.state is AdminState.ENABLED
        assert config.id not in exclude
        assert tool is None or endpoint.has_tool(tool)
        assert not 0 < config.max_in_flight <= endpoint.stats.in_flight
        if not chosen.panic:
            assert config.health is not Health.DOWN
            assert not endpoint.outlier.ejected(now)


def test_pick_returns_someone_whenever_a_healthy_candidate_exists(make_pool: MakePool) -> None:
    # Complement of the property above: refusing (503) must not happen while a server could serve.
    for states in itertools.product([Health.UP, Health.DOWN], repeat=3):
        put = make_pool([dict(health=h, priority=i % 2) for i, h in enumerate(states)])
        if Health.UP in states:
            chosen = put.pick()
            assert chosen is not None
            assert chosen.endpoint.config.health is Health.UP


# --- the claim the strategy exists for -------------------------------------------------------


def test_health_based_keeps_p99_near_healthy_when_one_replica_is_10x_slower() -> None:
    from bench.simulate_balancing import Params, simulate, workload

    params = Params(servers=3, duration=30.0, seed=4)
    arrivals, services = workload(params)

    def p99(strategy: Strategy, scenario: str) -> float:
        return simulate(params, strategy, scenario, arrivals, services).p99_ms

    healthy = p99(Strategy.HEALTH_BASED, "healthy")
    assert p99(Strategy.HEALTH_BASED, "slow") <= 1.5 * healthy
    assert p99(Strategy.ROUND_ROBIN, "slow") > 3 * p99(Strategy.ROUND_ROBIN, "healthy")
