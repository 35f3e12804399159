from __future__ import annotations

import random
from typing import Any

import pytest

from balancing.engine.config import AdminState, PoolConfig, ServerConfig, Transport
from balancing.engine.outlier import (
    Ejected,
    Outcome,
    OutlierDetector,
    OutlierPolicy,
    OutlierState,
    Recovered,
)

NOW = 1000.0
FAILURES = [Outcome.TRANSPORT_FAILURE, Outcome.TIMEOUT, Outcome.INTERNAL_ERROR]


def detector_for(count: int, **policy: Any) -> OutlierDetector:
    detector = OutlierDetector(OutlierPolicy(**policy), random.Random(11))
    detector.sync(
        ServerConfig(id=i, name=f"s{i}", transport=Transport.STDIO, command="x")
        for i in range(1, count + 1)
    )
    return detector


def fail(state: OutlierState, times: int, now: float = NOW) -> list[Ejected | Recovered | None]:
    return [state.record(Outcome.TRANSPORT_FAILURE, now) for _ in range(times)]


@pytest.mark.parametrize("outcome", FAILURES)
def test_outlier_five_consecutive_failures_eject(outcome: Outcome) -> None:
    state = detector_for(4).state(1)

    events = [state.record(outcome, NOW) for _ in range(5)]

    assert events[:4] == [None] * 4
    ejected = events[4]
    assert isinstance(ejected, Ejected)
    assert (ejected.server_id, ejected.count) == (1, 1)
    assert 27.0 <= ejected.until - NOW <= 33.0  # 30 s ± 10 %
    assert state.ejected(NOW + 1)


@pytest.mark.parametrize("interruption", [Outcome.SUCCESS, Outcome.TOOL_ERROR])
def test_outlier_success_or_tool_error_breaks_the_streak(interruption: Outcome) -> None:
    state = detector_for(4).state(1)

    fail(state, 4)
    state.record(interruption, NOW)
    events = fail(state, 4)

    assert events == [None] * 4
    assert not state.ejected(NOW)


def test_outlier_tool_errors_alone_never_eject() -> None:
    state = detector_for(4).state(1)

    events = [state.record(Outcome.TOOL_ERROR, NOW) for _ in range(50)]

    assert events == [None] * 50
    assert not state.ejected(NOW)


def test_outlier_ejection_time_grows_with_each_ejection_and_caps() -> None:
    state = detector_for(4, jitter=0.0).state(1)
    durations = []
    now = NOW

    fail(state, 5, now)
    for _ in range(12):
        durations.append(state.ejected_until - now)
        now = state.ejected_until  # half-open: the trial call fails
        event = state.record(Outcome.TIMEOUT, now)
        assert isinstance(event, Ejected)

    assert durations[:4] == pytest.approx([30.0, 60.0, 90.0, 120.0])
    assert durations[-1] == pytest.approx(300.0)
    assert max(durations) == pytest.approx(300.0)


def test_outlier_jitter_stays_within_ten_percent_of_the_capped_time() -> None:
    detector = detector_for(4)

    times = [detector.ejection_time(n) for n in range(1, 40) for _ in range(20)]

    assert all(27.0 <= t <= 330.0 for t in times)
    assert len({round(t, 6) for t in times}) > 100  # actually jittered


def test_outlier_half_open_lets_exactly_one_trial_through() -> None:
    state = detector_for(4).state(1)
    fail(state, 5)
    reopen = state.ejected_until

    assert not state.may_take(reopen - 0.1)
    assert state.may_take(reopen)
    state.claim_trial(reopen)
    assert not state.may_take(reopen + 1.0)  # everyone else skips it while the trial runs


def test_outlier_trial_success_closes_the_server() -> None:
    state = detector_for(4).state(1)
    fail(state, 5)
    reopen = state.ejected_until
    state.claim_trial(reopen)

    event = state.record(Outcome.SUCCESS, reopen + 0.05)

    assert event == Recovered(1)
    assert state.may_take(reopen + 0.1)
    assert not state.half_open(reopen + 0.1)


def test_outlier_trial_failure_ejects_again_for_longer() -> None:
    state = detector_for(4, jitter=0.0).state(1)
    fail(state, 5)
    reopen = state.ejected_until
    state.claim_trial(reopen)

    event = state.record(Outcome.TRANSPORT_FAILURE, reopen + 0.05)

    assert isinstance(event, Ejected)
    assert event.count == 2
    assert event.until - (reopen + 0.05) == pytest.approx(60.0)


def test_outlier_lost_trial_allows_another_after_the_trial_timeout() -> None:
    state = detector_for(4, trial_timeout=35.0).state(1)
    fail(state, 5)
    reopen = state.ejected_until
    state.claim_trial(reopen)

    assert not state.may_take(reopen + 34.0)
    assert state.may_take(reopen + 35.0)


def test_outlier_abandoned_trial_lets_the_next_call_be_the_trial() -> None:
    state = detector_for(4).state(1)
    fail(state, 5)
    reopen = state.ejected_until
    state.claim_trial(reopen)

    state.abandon_trial()

    assert state.may_take(reopen + 1.0)
    assert state.half_open(reopen + 1.0)


def test_outlier_success_of_a_call_started_before_ejection_does_not_end_it() -> None:
    state = detector_for(4).state(1)
    fail(state, 5)

    assert state.record(Outcome.SUCCESS, NOW + 1.0) is None
    assert state.ejected(NOW + 2.0)


def test_outlier_probe_ok_unejects_at_once() -> None:
    state = detector_for(4).state(1)
    fail(state, 5)

    event = state.mark_probe_ok(NOW + 3.0)

    assert event == Recovered(1)
    assert not state.ejected(NOW + 3.0)
    assert state.may_take(NOW + 3.0)
    assert state.mark_probe_ok(NOW + 4.0) is None  # nothing to recover from


def test_outlier_ejection_count_decays_while_in_service() -> None:
    state = detector_for(4, jitter=0.0).state(1)
    fail(state, 5)
    state.record(Outcome.TRANSPORT_FAILURE, state.ejected_until)  # n = 2
    back = state.ejected_until
    state.record(Outcome.SUCCESS, back)  # trial ok: in service

    event = fail(state, 5, back + 30.0)[-1]  # 30 s in service: one step of decay

    assert isinstance(event, Ejected)
    assert event.count == 2
    state.mark_probe_ok(event.until)
    later = fail(state, 5, event.until + 600.0)[-1]
    assert isinstance(later, Ejected)
    assert later.count == 1


def test_outlier_cap_keeps_at_most_half_the_pool_out() -> None:
    detector = detector_for(4)
    states = [detector.state(i) for i in range(1, 5)]

    events = [fail(state, 5)[-1] for state in states]

    assert [isinstance(e, Ejected) for e in events] == [True, True, False, False]
    assert detector.out_of_service() == 2
    # Once one comes back, the next failing server may go.
    states[0].mark_probe_ok(NOW + 1)
    assert isinstance(states[2].record(Outcome.TIMEOUT, NOW + 1), Ejected)
    assert detector.out_of_service() == 2


def test_outlier_half_open_servers_still_count_against_the_cap() -> None:
    detector = detector_for(2)
    first, second = detector.state(1), detector.state(2)
    fail(first, 5)

    event = fail(second, 5, first.ejected_until + 1)[-1]  # first is half-open, not back

    assert event is None


@pytest.mark.parametrize(("count", "ejectable"), [(1, 0), (2, 1), (3, 1), (5, 2), (10, 5)])
def test_outlier_cap_rounds_down(count: int, ejectable: int) -> None:
    assert detector_for(count).max_ejected() == ejectable


def test_outlier_sync_forgets_removed_servers_and_counts_only_enabled_ones() -> None:
    detector = detector_for(4)
    fail(detector.state(4), 5)

    detector.sync(
        [
            ServerConfig(id=1, name="s1", transport=Transport.STDIO, command="x"),
            ServerConfig(id=2, name="s2", transport=Transport.STDIO, command="x"),
            ServerConfig(
                id=3, name="s3", transport=Transport.STDIO, command="x", state=AdminState.DRAINING
            ),
        ]
    )

    assert detector.out_of_service() == 0  # s4 left with its ejection
    assert detector.max_ejected() == 1  # 2 enabled servers


def test_outlier_for_pool_takes_the_pool_settings() -> None:
    pool = PoolConfig(id=1, slug="p", consecutive_failures=2, ejection_base=10.0)
    detector = OutlierDetector.for_pool(pool, random.Random(1))
    detector.sync(
        ServerConfig(id=i, name=f"s{i}", transport=Transport.STDIO, command="x") for i in (1, 2)
    )

    event = fail(detector.state(1), 2)[-1]

    assert isinstance(event, Ejected)
    assert 9.0 <= event.until - NOW <= 11.0
