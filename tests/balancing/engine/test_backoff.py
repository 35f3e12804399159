from __future__ import annotations

import random

import pytest

from balancing.engine.backoff import Backoff


def test_backoff_without_jitter_grows_by_1_6_up_to_the_maximum() -> None:
    backoff = Backoff(jitter=0.0, rng=random.Random(1))

    delays = [backoff.next_delay() for _ in range(14)]

    assert delays[:4] == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert delays[-1] == 120.0
    assert max(delays) == 120.0


def test_backoff_jitter_stays_within_20_percent_and_never_above_144_s() -> None:
    backoff = Backoff(rng=random.Random(2))
    plain = Backoff(jitter=0.0)

    for _ in range(200):
        base = plain.next_delay()
        delay = backoff.next_delay()
        assert base * 0.8 <= delay <= base * 1.2
        assert delay <= 120.0 * 1.2


def test_backoff_jitter_spreads_processes_that_failed_together() -> None:
    firsts = {round(Backoff(rng=random.Random(seed)).next_delay(), 6) for seed in range(50)}

    assert len(firsts) == 50
    assert min(firsts) >= 0.8
    assert max(firsts) <= 1.2


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(6):
        backoff.next_delay()

    backoff.reset()

    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0


def test_backoff_same_seed_same_delays() -> None:
    one = Backoff(rng=random.Random(9))
    other = Backoff(rng=random.Random(9))

    assert [one.next_delay() for _ in range(10)] == [other.next_delay() for _ in range(10)]
