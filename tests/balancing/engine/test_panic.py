"""Panic as a state: the same arithmetic as the balancer's picks, with a reason people can read."""

from __future__ import annotations

from balancing.engine.balancer import panic_state
from balancing.engine.config import PoolConfig

POOL = PoolConfig(id=1, slug="p", panic_threshold=50.0)


def test_panic_state_under_threshold_is_panic_with_counts_in_the_reason() -> None:
    state = panic_state(POOL, [(0, True), (0, False), (0, False)])
    assert (state.panic, state.healthy, state.enabled) == (True, 1, 3)
    assert "1 of 3 servers healthy" in state.reason
    assert "50%" in state.reason


def test_panic_state_at_threshold_is_calm() -> None:
    state = panic_state(POOL, [(0, True), (0, False)])
    assert not state.panic
    assert state.reason == ""


def test_panic_state_nothing_healthy_is_panic() -> None:
    assert panic_state(POOL, [(0, False), (0, False)]).panic


def test_panic_state_healthy_backup_level_absorbs_the_load_so_no_panic() -> None:
    # level 0 has 1 of 3 healthy, but level 1 can take the rest (Envoy's spill-over, no panic)
    state = panic_state(POOL, [(0, True), (0, False), (0, False), (1, True), (1, True)])
    assert not state.panic


def test_panic_state_threshold_zero_turns_panic_off() -> None:
    off = PoolConfig(id=1, slug="p", panic_threshold=0.0)
    assert not panic_state(off, [(0, False), (0, False)]).panic


def test_panic_state_names_the_level_when_there_are_several() -> None:
    state = panic_state(POOL, [(0, False), (0, False), (1, False), (1, True), (1, False)])
    assert state.panic
    assert "at priority 0" in state.reason
