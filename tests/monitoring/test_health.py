"""Hysteresis of active checks, on plain numbers: no database, no clock."""

from __future__ import annotations

import pytest

from balancing.engine.config import Health
from monitoring.health import TOOLS_EVERY_CHECKS, Verdict, differing, judge, wants_tool_list


def run(
    current: Health, results: list[bool], *, fall: int = 3, rise: int = 2, window: float = 0.0
) -> list[Health]:
    """Feed results one by one, as consecutive checks would; returns the state after each."""
    good = bad = 0
    states = []
    for ok in results:
        verdict = judge(
            current,
            consecutive_ok=good,
            consecutive_failed=bad,
            ok=ok,
            fall=fall,
            rise=rise,
            slow_start_window=window,
            since_change=0.0,
        )
        good, bad = verdict.consecutive_ok, verdict.consecutive_failed
        current = verdict.health or current
        states.append(current)
    return states


def test_judge_unknown_server_is_up_after_one_success() -> None:
    assert run(Health.UNKNOWN, [True]) == [Health.UP]


def test_judge_unknown_server_is_down_after_fall_failures() -> None:
    assert run(Health.UNKNOWN, [False] * 3) == [Health.UNKNOWN, Health.UNKNOWN, Health.DOWN]


def test_judge_up_server_goes_down_only_after_fall_failures_in_a_row() -> None:
    states = run(Health.UP, [False, False, True, False, False, False])

    assert states == [Health.UP] * 5 + [Health.DOWN]


def test_judge_down_server_comes_back_after_rise_successes() -> None:
    assert run(Health.DOWN, [True, False, True, True]) == [Health.DOWN] * 3 + [Health.UP]


@pytest.mark.parametrize("start", [Health.UP, Health.DOWN])
def test_judge_flapping_server_never_changes_state(start: Health) -> None:
    # given a server that answers every other check
    states = run(start, [True, False] * 20)

    # then neither threshold is ever reached: no flip at all
    assert set(states) == {start}


def test_judge_down_server_with_slow_start_recovers_before_up() -> None:
    good_twice = run(Health.DOWN, [True, True], window=30.0)

    assert good_twice == [Health.DOWN, Health.RECOVERING]


def test_judge_recovering_server_is_up_once_the_slow_start_window_passed() -> None:
    # given a server that came back 10 s ago with a 30 s window
    early = judge(
        Health.RECOVERING, consecutive_ok=2, consecutive_failed=0, ok=True, fall=3, rise=2,
        since_change=10.0, slow_start_window=30.0,
    )  # fmt: skip
    late = judge(
        Health.RECOVERING, consecutive_ok=7, consecutive_failed=0, ok=True, fall=3, rise=2,
        since_change=31.0, slow_start_window=30.0,
    )  # fmt: skip

    assert early.health is None
    assert late.health is Health.UP


def test_judge_recovering_server_goes_down_after_fall_failures() -> None:
    assert run(Health.RECOVERING, [False] * 3, window=30.0)[-1] is Health.DOWN


def test_judge_passing_check_ends_an_ejection() -> None:
    verdict = judge(
        Health.EJECTED, consecutive_ok=40, consecutive_failed=0, ok=True, fall=3, rise=2
    )

    assert verdict.health is Health.UP
    assert "ejection ended" in verdict.reason


def test_judge_failure_reason_names_the_count_and_the_error() -> None:
    verdict = judge(
        Health.UP, consecutive_ok=0, consecutive_failed=2, ok=False, fall=3, rise=2,
        error="connect refused",
    )  # fmt: skip

    assert verdict == Verdict(0, 3, Health.DOWN, "3 failed checks in a row: connect refused")


def test_judge_steady_result_keeps_state_and_counts() -> None:
    verdict = judge(Health.UP, consecutive_ok=5, consecutive_failed=0, ok=True, fall=3, rise=2)

    assert verdict == Verdict(6, 0)


def test_wants_tool_list_when_never_listed_or_not_up_or_now_and_then() -> None:
    assert wants_tool_list(Health.UP, consecutive_ok=3, tools_hash="")
    assert wants_tool_list(Health.DOWN, consecutive_ok=1, tools_hash="abc")
    assert wants_tool_list(Health.UP, consecutive_ok=TOOLS_EVERY_CHECKS - 1, tools_hash="abc")
    assert not wants_tool_list(Health.UP, consecutive_ok=TOOLS_EVERY_CHECKS, tools_hash="abc")


def test_differing_flags_the_minority_tool_set() -> None:
    assert differing({1: "a", 2: "a", 3: "b"}) == {3}


def test_differing_flags_both_sides_of_a_tie() -> None:
    assert differing({1: "a", 2: "b"}) == {1, 2}


def test_differing_ignores_servers_not_listed_yet_and_agreeing_pools() -> None:
    assert differing({1: "a", 2: "", 3: "a"}) == set()
    assert differing({1: "a"}) == set()
    assert differing({}) == set()
