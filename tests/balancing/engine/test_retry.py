from __future__ import annotations

from typing import Any

import pytest

from balancing.engine.config import RetryPolicy
from balancing.engine.retry import RetryBudget, may_retry

READ_ONLY = {"readOnlyHint": True}
IDEMPOTENT = {"readOnlyHint": False, "idempotentHint": True}
PLAIN = {"readOnlyHint": False, "destructiveHint": True}


@pytest.mark.parametrize(
    ("policy", "delivered", "annotations", "expected"),
    [
        # never sent: always safe to send elsewhere, unless retries are off
        (RetryPolicy.SAFE, False, None, True),
        (RetryPolicy.UNDELIVERED, False, PLAIN, True),
        (RetryPolicy.NEVER, False, None, False),
        # sent: only tools that say repeating is harmless, and only under SAFE
        (RetryPolicy.SAFE, True, READ_ONLY, True),
        (RetryPolicy.SAFE, True, IDEMPOTENT, True),
        (RetryPolicy.SAFE, True, PLAIN, False),
        (RetryPolicy.SAFE, True, None, False),
        (RetryPolicy.SAFE, True, {}, False),
        (RetryPolicy.SAFE, True, {"readOnlyHint": "true"}, False),  # only a real boolean
        (RetryPolicy.SAFE, True, {"read_only_hint": True}, True),
        (RetryPolicy.UNDELIVERED, True, READ_ONLY, False),
        (RetryPolicy.NEVER, True, READ_ONLY, False),
    ],
)
def test_may_retry_follows_policy_delivery_and_tool_hints(
    policy: RetryPolicy, delivered: bool, annotations: dict[str, Any], expected: bool
) -> None:
    assert may_retry(policy, delivered, annotations) is expected


def test_retry_budget_quiet_pool_allows_the_minimum() -> None:
    budget = RetryBudget(percent=20, minimum=3)
    budget.call_started()

    granted = [budget.try_retry() for _ in range(5)]

    assert granted == [True, True, True, False, False]
    assert (budget.retries_total, budget.refused_total) == (3, 2)


def test_retry_budget_busy_pool_allows_twenty_percent() -> None:
    budget = RetryBudget(percent=20, minimum=3)
    for _ in range(100):
        budget.call_started()

    granted = sum(budget.try_retry() for _ in range(50))

    assert granted == 20
    assert budget.refused_total == 30


def test_retry_budget_finished_retries_free_their_slot() -> None:
    budget = RetryBudget(percent=20, minimum=1)
    assert budget.try_retry()
    assert not budget.try_retry()

    budget.retry_finished()

    assert budget.try_retry()
    assert budget.retries_total == 2


def test_retry_budget_shrinks_as_calls_finish() -> None:
    budget = RetryBudget(percent=50, minimum=0)
    for _ in range(4):
        budget.call_started()
    assert budget.limit() == 2

    for _ in range(4):
        budget.call_finished()
    budget.call_finished()  # an extra finish never goes negative

    assert budget.limit() == 0
    assert not budget.try_retry()
