from __future__ import annotations

import math

import pytest

from balancing.engine.stats import ServerStats


def measured(stats: ServerStats, now: float, latency: float, failed: bool = False) -> None:
    stats.begin()
    stats.end(now, latency, failed)


def test_stats_latency_jumps_up_to_a_higher_sample_at_once() -> None:
    stats = ServerStats(decay=10.0)
    measured(stats, 0.0, 0.01)

    measured(stats, 0.001, 0.5)

    assert stats.latency(0.001) == 0.5


def test_stats_latency_decays_toward_lower_samples_with_the_time_constant() -> None:
    stats = ServerStats(decay=10.0)
    measured(stats, 0.0, 0.1)

    measured(stats, 10.0, 0.01)  # one time constant later

    expected = 0.1 * math.exp(-1) + 0.01 * (1 - math.exp(-1))
    assert stats.latency(10.0) == pytest.approx(expected)


def test_stats_busy_server_forgets_a_lone_slow_call_within_tens_of_calls() -> None:
    stats = ServerStats(decay=10.0)
    measured(stats, 0.0, 0.1)

    for i in range(1, 61):  # 60 fast calls in 0.6 s, far less than the decay time
        measured(stats, i * 0.01, 0.01)

    # Purely time-weighted, 0.6 s of a 10 s constant would keep ~94 % of the slow call's excess;
    # the busy server must have forgotten most of it (a tenth at most) within these 60 calls.
    excess = stats.latency(0.6) - 0.01
    assert 0 < excess < 0.09 * 0.1


def test_stats_error_rate_uses_the_same_floor_per_call() -> None:
    # a failure right after start weighs what a fast call weighs in the latency estimate
    errors = ServerStats(decay=10.0)
    measured(errors, 0.001, 0.01, failed=True)
    latency = ServerStats(decay=10.0)
    measured(latency, 0.0, 1.0)
    measured(latency, 0.001, 0.0)
    weight_of_one_call = 1.0 - latency.latency(0.001)

    assert 0 < weight_of_one_call < 0.5
    assert errors.error_rate(0.001) == pytest.approx(weight_of_one_call)


def test_stats_failure_never_lowers_the_latency_estimate() -> None:
    stats = ServerStats(decay=10.0)
    measured(stats, 0.0, 0.2)

    measured(stats, 5.0, 0.001, failed=True)

    assert stats.latency(5.0) == 0.2
    assert stats.failures == 1
    assert stats.calls == 2


def test_stats_error_rate_rises_with_failures_and_fades_with_successes() -> None:
    stats = ServerStats(decay=10.0)
    for i in range(20):
        measured(stats, i * 1.0, 0.01, failed=True)
    high = stats.error_rate(19.0)

    for i in range(20, 60):
        measured(stats, i * 1.0, 0.01)

    assert high > 0.8
    assert stats.error_rate(59.0) < 0.05


def test_stats_idle_server_estimate_decays_only_after_a_quiet_decay_period() -> None:
    stats = ServerStats(decay=10.0)
    measured(stats, 0.0, 0.5)

    assert stats.latency(10.0) == 0.5  # quiet for less than a period: unchanged
    assert stats.latency(20.0) == pytest.approx(0.5 * math.exp(-1))
    stats.begin()  # a call is stuck in flight: a hung server must not start to look fast
    assert stats.latency(60.0) == 0.5


def test_stats_in_flight_counts_calls_and_never_goes_negative() -> None:
    stats = ServerStats()
    stats.begin()
    stats.begin()

    stats.end(1.0, 0.01)
    stats.end(1.0, 0.01)
    stats.end(1.0, 0.01)  # a stray end (bug elsewhere) must not make the server look idle-er

    assert stats.in_flight == 0
    assert stats.calls == 3
